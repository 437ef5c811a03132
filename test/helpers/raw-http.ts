/** Raw HTTP/1.1 over node:net, for what fetch refuses to send: garbage, truncated, pipelined and slow requests. */
import net from 'node:net';

export interface RawResult {
  /** Every byte the server sent before closing or before the wait ran out. */
  data: Buffer;
  /** The server closed (or reset) the connection. */
  closed: boolean;
}

export interface RawOptions {
  /** Half-close after writing, as a client that has nothing more to send. */
  endAfterWrite?: boolean;
  /** Stop waiting after this long (the connection is then destroyed). */
  waitMs?: number;
  /** Stop once this many complete responses have arrived. */
  responses?: number;
}

export function rawRequest(port: number, payload: Buffer | string, options: RawOptions = {}): Promise<RawResult> {
  const { endAfterWrite = true, waitMs = 15_000, responses } = options;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1');
    let settled = false;
    const settle = (closed: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(chunks), closed });
    };
    const timer = setTimeout(() => settle(false), waitMs);
    socket.on('connect', () => {
      socket.write(payload);
      if (endAfterWrite) socket.end();
    });
    socket.on('data', (chunk) => {
      chunks.push(chunk);
      if (responses !== undefined && parseResponses(Buffer.concat(chunks)).responses.length >= responses) settle(false);
    });
    socket.on('error', () => settle(true));
    socket.on('close', () => settle(true));
  });
}

export interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/**
 * Splits a byte stream into complete HTTP/1.1 responses (Content-Length or chunked bodies);
 * `rest` is what is left over. `methods` are the requests' methods, in order.
 */
export function parseResponses(data: Buffer, methods: readonly string[] = []): { responses: RawResponse[]; rest: Buffer; malformed: string | null } {
  const responses: RawResponse[] = [];
  let offset = 0;
  while (offset < data.length) {
    const headEnd = data.indexOf('\r\n\r\n', offset);
    if (headEnd < 0) break;
    const lines = data.subarray(offset, headEnd).toString('latin1').split('\r\n');
    const statusMatch = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
    if (!statusMatch) return { responses, rest: data.subarray(offset), malformed: `bad status line: ${JSON.stringify(lines[0])}` };
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) return { responses, rest: data.subarray(offset), malformed: `bad header line: ${JSON.stringify(line)}` };
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    let cursor = headEnd + 4;
    let body: Buffer;
    const status = Number(statusMatch[1]);
    if (methods[responses.length] === 'HEAD' || status === 204 || status === 304) {
      body = Buffer.alloc(0);
    } else if (headers.get('transfer-encoding')?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const sizeEnd = data.indexOf('\r\n', cursor);
        if (sizeEnd < 0) return { responses, rest: data.subarray(offset), malformed: null };
        const size = parseInt(data.subarray(cursor, sizeEnd).toString('latin1'), 16);
        if (!Number.isFinite(size)) return { responses, rest: data.subarray(offset), malformed: 'bad chunk size' };
        if (data.length < sizeEnd + 2 + size + 2) return { responses, rest: data.subarray(offset), malformed: null };
        parts.push(data.subarray(sizeEnd + 2, sizeEnd + 2 + size));
        cursor = sizeEnd + 2 + size + 2;
        if (size === 0) break;
      }
      body = Buffer.concat(parts);
    } else {
      const length = Number(headers.get('content-length') ?? 0);
      if (data.length < cursor + length) return { responses, rest: data.subarray(offset), malformed: null };
      body = data.subarray(cursor, cursor + length);
      cursor += length;
    }
    responses.push({ status, headers, body });
    offset = cursor;
  }
  return { responses, rest: data.subarray(offset), malformed: null };
}
