/**
 * One HTTP request and its response over uWebSockets.js. uWS hands out the request object only
 * for the synchronous part of the handler and aborts the process on an async reply without an
 * abort handler, so everything needed is copied out at once and the abort handler is always set.
 *
 * Slow clients: a body must arrive within `bodyTimeoutMs` (else 408 and the connection is
 * closed). A streamed answer the client does not read is held, once uWS reports backpressure,
 * up to `maxStreamBufferBytes`; past that the connection is closed, which runs the abort
 * listeners (the engine cancels the generation).
 */
import type { HttpRequest, HttpResponse } from 'uWebSockets.js';
import { ServeError } from '../../core/errors.ts';

const STATUS_TEXT: Record<number, string> = {
  200: '200 OK',
  204: '204 No Content',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  408: '408 Request Timeout',
  409: '409 Conflict',
  413: '413 Payload Too Large',
  422: '422 Unprocessable Entity',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  502: '502 Bad Gateway',
  503: '503 Service Unavailable',
  507: '507 Insufficient Storage',
};

export const statusLine = (status: number): string => STATUS_TEXT[status] ?? `${status} Status`;

export interface ExchangeOptions {
  requestId: string;
  bodyTimeoutMs: number;
  maxStreamBufferBytes: number;
  /** Sent with every response (CORS). */
  responseHeaders: Record<string, string>;
}

/** Why the server closed a connection itself; logged with the request. */
export type DropReason = 'body_timeout' | 'stream_backpressure';

export class Exchange {
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  readonly headers: Map<string, string>;
  readonly requestId: string;
  aborted = false;
  status = 0;
  dropped: DropReason | null = null;
  private responded = false;
  private streaming = false;
  private closeAfterResponse = false;
  private readonly abortListeners: (() => void)[] = [];
  /** Chunks held while uWS reports backpressure, written as the socket drains. */
  private held: string[] = [];
  private heldBytes = 0;
  private waitingForDrain = false;
  private heldEnd: string | null = null;

  constructor(private readonly res: HttpResponse, req: HttpRequest, private readonly options: ExchangeOptions) {
    this.method = req.getCaseSensitiveMethod();
    this.path = req.getUrl();
    this.query = new URLSearchParams(req.getQuery() ?? '');
    this.headers = new Map();
    req.forEach((key, value) => this.headers.set(key, value));
    this.requestId = options.requestId;
    res.onAborted(() => {
      this.aborted = true;
      for (const listener of this.abortListeners.splice(0)) listener();
    });
  }

  get isStreaming(): boolean {
    return this.streaming;
  }

  get hasResponded(): boolean {
    return this.responded || this.aborted;
  }

  onAbort(listener: () => void): void {
    if (this.aborted) listener();
    else this.abortListeners.push(listener);
  }

  /** The whole body, refused with 413 past `limit` bytes and with 408 (closing the connection) when it arrives too slowly. */
  readBody(limit: number): Promise<Buffer> {
    const declared = Number(this.headers.get('content-length') ?? 0);
    if (declared > limit) return Promise.reject(this.tooLarge(limit));
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      const settle = (error: ServeError | null): void => {
        done = true;
        clearTimeout(timer);
        if (error) reject(error);
        else resolve(Buffer.concat(chunks));
      };
      const timer = setTimeout(() => {
        this.closeAfterResponse = true;
        this.dropped = 'body_timeout';
        settle(new ServeError('body_timeout', `request body did not arrive within ${this.options.bodyTimeoutMs / 1000} s`));
      }, this.options.bodyTimeoutMs);
      this.onAbort(() => {
        if (!done) settle(new ServeError('cancelled', 'client went away'));
      });
      this.res.onData((chunk, isLast) => {
        if (done) return;
        size += chunk.byteLength;
        if (size > limit) {
          settle(this.tooLarge(limit));
          return;
        }
        chunks.push(Buffer.from(chunk.slice(0)));
        if (isLast) settle(null);
      });
    });
  }

  private tooLarge(limit: number): ServeError {
    return new ServeError('body_too_large', `request body is larger than the limit of ${limit} bytes`);
  }

  send(status: number, body: string | Buffer, contentType: string, headers: Record<string, string> = {}): void {
    if (this.hasResponded) return;
    this.responded = true;
    this.status = status;
    this.res.cork(() => {
      this.writeHead(status, contentType, headers);
      if (this.method === 'HEAD') {
        // endWithoutBody with a length (even undefined) leaves uWS waiting for that many body
        // bytes, so a pipelined request behind it aborts the connection; a bare call does not.
        // HEAD routes never read a body, so the connection never needs closing here.
        this.res.writeHeader('content-length', String(Buffer.byteLength(body)));
        this.res.endWithoutBody();
      } else this.res.end(body, this.closeAfterResponse);
    });
  }

  json(status: number, body: unknown, headers?: Record<string, string>): void {
    this.send(status, JSON.stringify(body), 'application/json; charset=utf-8', headers);
  }

  /** Begins a streamed response (SSE or NDJSON); chunks follow with `write`, then `end`. */
  startStream(contentType: string): void {
    if (this.hasResponded || this.streaming) return;
    this.streaming = true;
    this.status = 200;
    this.res.cork(() => this.writeHead(200, contentType, { 'cache-control': 'no-cache', 'x-accel-buffering': 'no' }));
  }

  /** Status and headers every answer carries; call inside cork. */
  private writeHead(status: number, contentType: string, headers: Record<string, string>): void {
    this.res.writeStatus(statusLine(status));
    this.res.writeHeader('content-type', contentType);
    this.res.writeHeader('x-request-id', this.requestId);
    for (const [name, value] of Object.entries({ ...this.options.responseHeaders, ...headers })) this.res.writeHeader(name, value);
  }

  /** Writes a chunk, or holds it while the client is not reading (see the class comment). */
  write(chunk: string): void {
    if (this.aborted || this.responded) return;
    if (this.waitingForDrain) {
      this.hold(chunk);
      return;
    }
    let accepted = true;
    this.res.cork(() => {
      accepted = this.res.write(chunk);
    });
    if (!accepted) this.awaitDrain();
  }

  end(chunk = ''): void {
    if (this.hasResponded) return;
    this.responded = true;
    if (this.waitingForDrain) this.heldEnd = chunk;
    else this.res.cork(() => this.res.end(chunk));
  }

  private hold(chunk: string): void {
    this.held.push(chunk);
    this.heldBytes += Buffer.byteLength(chunk);
    if (this.heldBytes > this.options.maxStreamBufferBytes) {
      this.dropped = 'stream_backpressure';
      this.held = [];
      this.res.close();
    }
  }

  // uWS keeps the chunk whose write reported backpressure; later ones wait here until it drains.
  private awaitDrain(): void {
    this.waitingForDrain = true;
    this.res.onWritable(() => this.drain());
  }

  /** Called by uWS when the socket can take more; returns false while it still cannot. */
  private drain(): boolean {
    if (this.aborted) return true;
    let accepted = true;
    this.res.cork(() => {
      while (accepted && this.held.length > 0) {
        const chunk = this.held.shift() as string;
        this.heldBytes -= Buffer.byteLength(chunk);
        accepted = this.res.write(chunk);
      }
      if (accepted) {
        this.waitingForDrain = false;
        if (this.heldEnd !== null) this.res.end(this.heldEnd);
      }
    });
    return accepted;
  }
}
