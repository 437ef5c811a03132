/**
 * One HTTP request and its response over uWebSockets.js. uWS hands out the request object only
 * for the synchronous part of the handler and aborts the process on an async reply without an
 * abort handler, so everything needed is copied out at once and the abort handler is always set.
 */
import type { HttpRequest, HttpResponse } from 'uWebSockets.js';
import { ServeError } from '../errors.ts';

const STATUS_TEXT: Record<number, string> = {
  200: '200 OK',
  204: '204 No Content',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
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

export class Exchange {
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  readonly headers: Map<string, string>;
  readonly requestId: string;
  aborted = false;
  status = 0;
  private responded = false;
  private streaming = false;
  private readonly abortListeners: (() => void)[] = [];

  constructor(private readonly res: HttpResponse, req: HttpRequest, requestId: string) {
    this.method = req.getCaseSensitiveMethod();
    this.path = req.getUrl();
    this.query = new URLSearchParams(req.getQuery() ?? '');
    this.headers = new Map();
    req.forEach((key, value) => this.headers.set(key, value));
    this.requestId = requestId;
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

  /** The whole body, refused with 413 past `limit` bytes. */
  readBody(limit: number): Promise<Buffer> {
    const declared = Number(this.headers.get('content-length') ?? 0);
    if (declared > limit) return Promise.reject(this.tooLarge(limit));
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      this.onAbort(() => reject(new ServeError(400, 'cancelled', 'client went away')));
      this.res.onData((chunk, isLast) => {
        if (size < 0) return;
        size += chunk.byteLength;
        if (size > limit) {
          size = -1;
          reject(this.tooLarge(limit));
          return;
        }
        chunks.push(Buffer.from(chunk.slice(0)));
        if (isLast) resolve(Buffer.concat(chunks));
      });
    });
  }

  private tooLarge(limit: number): ServeError {
    return new ServeError(413, 'body_too_large', `request body is larger than the limit of ${limit} bytes`);
  }

  send(status: number, body: string | Buffer, contentType: string, headers: Record<string, string> = {}): void {
    if (this.hasResponded) return;
    this.responded = true;
    this.status = status;
    this.res.cork(() => {
      this.res.writeStatus(statusLine(status));
      this.res.writeHeader('content-type', contentType);
      this.res.writeHeader('x-request-id', this.requestId);
      for (const [name, value] of Object.entries(headers)) this.res.writeHeader(name, value);
      if (this.method === 'HEAD') this.res.endWithoutBody(Buffer.byteLength(body));
      else this.res.end(body);
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
    this.res.cork(() => {
      this.res.writeStatus(statusLine(200));
      this.res.writeHeader('content-type', contentType);
      this.res.writeHeader('cache-control', 'no-cache');
      this.res.writeHeader('x-accel-buffering', 'no');
      this.res.writeHeader('x-request-id', this.requestId);
    });
  }

  write(chunk: string): void {
    if (this.aborted || this.responded) return;
    this.res.cork(() => this.res.write(chunk));
  }

  end(chunk = ''): void {
    if (this.hasResponded) return;
    this.responded = true;
    this.res.cork(() => this.res.end(chunk));
  }
}
