/**
 * The one client of our own HTTP API: the CLI's commands, the bench, the soak and the tests talk
 * to a server through it. It knows the wire (JSON replies, SSE and NDJSON streams, both
 * generation shapes) and nothing of what its callers do with the answers.
 */
import http from 'node:http';
import type { LoadReply, ServerStatus, UnloadReply } from '../api/admin.ts';

export type { LoadReply, ServerStatus, UnloadReply };

/** GET /admin/health's answer, as far as clients read it. */
export interface ServerHealth {
  status: string;
  model_state?: string;
  active_requests: number;
  queued_requests: number;
}

type JsonObject = Record<string, unknown>;

/** Why a request of ours failed: the server could not be reached, it answered an error status, or a stream carried an error. */
export type ClientErrorCode = 'unreachable' | 'http_status' | 'stream_error';

export class ClientError extends Error {
  /** The HTTP status the server answered; 0 where none came (unreachable, or an error inside a 200 stream). */
  readonly status: number;
  readonly code: ClientErrorCode;
  /** Why, in the system's words: for an unreachable server its error code (ECONNREFUSED), else the message. */
  readonly reason: string;

  constructor(message: string, status: number, code: ClientErrorCode, reason = message) {
    super(message);
    this.status = status;
    this.code = code;
    this.reason = reason;
  }
}

export const trimBase = (url: string): string => url.replace(/\/+$/, '');

export const DEFAULT_HOST = 'http://127.0.0.1:11437';
/** The server's URL for client commands. */
export const URL_ENV = 'MLX_SERVER_URL';
/** `serve`'s bind address; client commands still read it when MLX_SERVER_URL is unset, as they did before it existed. */
export const HOST_ENV = 'MLX_SERVER_HOST';

/**
 * Where the server is, read as Ollama reads OLLAMA_HOST: a URL, "host:port", "host" or ":port".
 * A host without a port takes `serve`'s port (MLX_SERVER_PORT, default 11437), so a bind
 * address in MLX_SERVER_HOST finds the server it started; https without a port means 443.
 */
export function serverUrl(host: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const value = (host ?? '').trim() || DEFAULT_HOST;
  const withoutScheme = value.replace(/^https?:\/\//, '');
  const url = new URL(value === withoutScheme ? `http://${value.startsWith(':') ? `127.0.0.1${value}` : value}` : value);
  const hasPort = /^[^/]*:\d+(\/|$)/.test(withoutScheme) || withoutScheme.startsWith(':');
  if (!hasPort && url.protocol === 'http:') url.port = env.MLX_SERVER_PORT || new URL(DEFAULT_HOST).port;
  return trimBase(url.toString());
}

/** The server's URL and what it was read from: --host, MLX_SERVER_URL, MLX_SERVER_HOST, or the default. */
export function serverLocation(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): { url: string; source: string } {
  const [source, value] = ([['--host', flag], [URL_ENV, env[URL_ENV]], [HOST_ENV, env[HOST_ENV]]] as const).find(([, v]) => v?.trim()) ?? ['the default', undefined];
  return { url: serverUrl(value, env), source };
}

export interface JsonReply<T> {
  status: number;
  /** The parsed body; null for an empty one, `{ raw }` for one that is not JSON (a proxy's error page). */
  body: T;
  headers: Headers;
}

/** One exchange whose reply is read as JSON whatever its status: for callers that judge the status themselves. */
export async function exchangeJson<T = JsonObject>(url: string, init?: RequestInit): Promise<JsonReply<T>> {
  const response = await fetch(url, init);
  const text = await response.text();
  return { status: response.status, body: parseBody(text) as T, headers: response.headers };
}

function parseBody(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { raw: text };
  }
}

const postInit = (body: unknown, signal?: AbortSignal): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: typeof body === 'string' ? body : JSON.stringify(body),
  ...(signal ? { signal } : {}),
});

/** POSTs `body` (an object, or a string sent as it is: a malformed body on purpose); the response is the caller's to read. */
export const postRequest = (url: string, body: unknown, signal?: AbortSignal): Promise<Response> => fetch(url, postInit(body, signal));

/** POSTs `body` as postRequest does and reads the JSON reply. */
export const postJson = <T = JsonObject>(url: string, body: unknown, signal?: AbortSignal): Promise<JsonReply<T>> => exchangeJson<T>(url, postInit(body, signal));

/** The message in an error reply: Ollama's `{error: "…"}`, OpenAI's `{error: {message}}`, else the text itself. */
function errorMessage(text: string): string {
  try {
    const error = (JSON.parse(text) as { error?: string | { message?: string } }).error;
    if (typeof error === 'string') return error;
    if (error?.message) return error.message;
  } catch {
    // not JSON: the text itself is the message
  }
  return text;
}

/** How a streamed reply is framed: Server-Sent Events (OpenAI's routes) or one JSON object a line (Ollama's). */
export type StreamFormat = 'sse' | 'ndjson';

/**
 * Splits a growing stream into its JSON records, keeping the unfinished tail; SSE's `[DONE]` is
 * no record. Each piece of text comes with its arrival time, which each record it completes keeps.
 */
export function recordReader(format: StreamFormat, onRecord: (record: JsonObject, at: number) => void): (text: string, at: number) => void {
  let pending = '';
  return (text, at) => {
    pending += text;
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const payload = format === 'sse' ? (line.startsWith('data: ') ? line.slice(6).trim() : '') : line.trim();
      if (payload !== '' && payload !== '[DONE]') onRecord(JSON.parse(payload) as JsonObject, at);
    }
  };
}

/** The records of a streamed body, each once it is complete. */
export async function* streamRecords(body: AsyncIterable<Uint8Array>, format: StreamFormat): AsyncGenerator<JsonObject> {
  const decoder = new TextDecoder();
  const complete: JsonObject[] = [];
  const take = recordReader(format, (record) => complete.push(record));
  for await (const chunk of body) {
    take(decoder.decode(chunk, { stream: true }), 0);
    yield* complete.splice(0);
  }
}

export type ApiRoute = 'openai-completions' | 'openai-chat' | 'ollama-generate' | 'ollama-chat';
export const ROUTE_PATHS: Record<ApiRoute, string> = {
  'openai-completions': '/v1/completions',
  'openai-chat': '/v1/chat/completions',
  'ollama-generate': '/api/generate',
  'ollama-chat': '/api/chat',
};

export const isOpenAiRoute = (route: ApiRoute): boolean => route.startsWith('openai');

export interface GenerationRequest {
  route: ApiRoute;
  /** Left out, OpenAI's routes let the server pick its default model. */
  model?: string | undefined;
  prompt: string;
  maxTokens: number;
  stream: boolean;
  temperature: number;
  seed: number;
}

/**
 * A generation request on either API. On OpenAI's routes it ignores end-of-sequence, so a run
 * generates exactly maxTokens tokens, and a stream ends with its usage. Ollama's options have no
 * ignore_eos: there a model may stop early, and the counted tokens are what the reply says.
 */
export function generationBody(request: GenerationRequest): JsonObject {
  const { route, model, prompt, maxTokens, stream, temperature, seed } = request;
  const input = route === 'openai-chat' || route === 'ollama-chat' ? { messages: [{ role: 'user', content: prompt }] } : { prompt };
  if (isOpenAiRoute(route)) {
    return { model, ...input, max_tokens: maxTokens, temperature, seed, ignore_eos: true, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) };
  }
  return { model, ...input, stream, options: { num_predict: maxTokens, temperature, seed } };
}

/** What one reply, or one streamed record, of a generation says, read alike from both APIs' shapes. */
export interface GenerationEvent {
  text: string;
  promptTokens: number | null;
  completionTokens: number | null;
  error: string | null;
}

export function generationEvent(record: JsonObject): GenerationEvent {
  const error = record.error as { message?: string } | string | undefined;
  if (error) return { text: '', promptTokens: null, completionTokens: null, error: typeof error === 'string' ? error : (error.message ?? 'error') };
  const count = (value: unknown): number | null => (typeof value === 'number' ? value : null);
  if ('choices' in record || 'usage' in record) {
    const choices = (record.choices as { text?: string; delta?: { content?: string }; message?: { content?: string } }[] | undefined) ?? [];
    const usage = record.usage as { prompt_tokens?: number; completion_tokens?: number } | undefined | null;
    const text = choices.map((c) => c.text ?? c.delta?.content ?? c.message?.content ?? '').join('');
    return { text, promptTokens: count(usage?.prompt_tokens), completionTokens: count(usage?.completion_tokens), error: null };
  }
  const text = typeof record.response === 'string' ? record.response : ((record.message as { content?: string } | undefined)?.content ?? '');
  return { text, promptTokens: count(record.prompt_eval_count), completionTokens: count(record.eval_count), error: null };
}

/** The measuring clients' connection pool: kept-alive sockets, enough for any bench's concurrency. */
export const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });

export interface HttpReply {
  status: number;
  body: string;
}

/**
 * One exchange on the keep-alive agent, for clients that measure: `onData` sees each piece of
 * the body as it arrives, with its arrival time (performance.now()). A kept-alive socket that the
 * server closed while it sat idle (llama-server does after each reply) fails at once with a
 * reset before any byte was answered; the exchange is then sent once more on a new socket, as
 * Node's documentation advises.
 */
export async function send(url: string, method: string, body?: unknown, onData?: (text: string, at: number) => void): Promise<HttpReply> {
  try {
    return await sendOnce(url, method, body, onData, agent);
  } catch (error) {
    if (!(error instanceof StaleSocketError)) throw error;
    // Not the pool again: its other idle sockets may be just as stale.
    return sendOnce(url, method, body, onData, false);
  }
}

class StaleSocketError extends Error {}

function sendOnce(url: string, method: string, body: unknown, onData: ((text: string, at: number) => void) | undefined, via: http.Agent | false): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request(url, { method, agent: via, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} }, (response) => {
      response.setEncoding('utf8');
      let text = '';
      response.on('data', (piece: string) => {
        text += piece;
        onData?.(piece, performance.now());
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text }));
      response.on('error', reject);
    });
    request.on('error', (error: NodeJS.ErrnoException) => reject(request.reusedSocket && error.code === 'ECONNRESET' ? new StaleSocketError(error.message) : error));
    request.end(payload);
  });
}

export interface ApiClientOptions {
  /** Ends any request still running after this long. */
  timeoutMs?: number;
}

/** A server of ours at one base URL. A request that fails throws a ClientError saying why. */
export class ApiClient {
  readonly base: string;
  private readonly timeoutMs: number | undefined;

  constructor(base: string, options: ApiClientOptions = {}) {
    this.base = trimBase(base);
    this.timeoutMs = options.timeoutMs;
  }

  /** The whole response of a 2xx; `signal` ends it early (its AbortError is thrown as it is). */
  async request(path: string, init: { method?: string; body?: string; signal?: AbortSignal } = {}): Promise<Response> {
    const signals = [init.signal, this.timeoutMs === undefined ? undefined : AbortSignal.timeout(this.timeoutMs)].filter((s) => s !== undefined);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    let response: Response;
    try {
      response = await fetch(this.base + path, { ...init, headers: { 'content-type': 'application/json' }, ...(signal ? { signal } : {}) });
    } catch (error) {
      if ((error as Error).name === 'AbortError' || (error as Error).name === 'TimeoutError') throw error;
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new ClientError((error as Error).message, 0, 'unreachable', cause?.code ?? cause?.message ?? (error as Error).message);
    }
    if (!response.ok) throw new ClientError(`${errorMessage(await response.text())} (HTTP ${response.status})`, response.status, 'http_status');
    return response;
  }

  async get<T = JsonObject>(path: string): Promise<T> {
    return (await (await this.request(path)).json()) as T;
  }

  async post<T = JsonObject>(path: string, body: unknown): Promise<T> {
    return (await (await this.request(path, { method: 'POST', body: JSON.stringify(body) })).json()) as T;
  }

  /** POSTs with `stream: true` and yields each record of the streamed answer; a record carrying an error is thrown. */
  async *stream(path: string, body: JsonObject, signal?: AbortSignal): AsyncGenerator<JsonObject> {
    const response = await this.request(path, { method: 'POST', body: JSON.stringify({ ...body, stream: true }), ...(signal ? { signal } : {}) });
    if (!response.body) return;
    const format: StreamFormat = path.startsWith('/v1/') ? 'sse' : 'ndjson';
    for await (const record of streamRecords(response.body, format)) {
      const { error } = generationEvent(record);
      if (error !== null) throw new ClientError(error, 0, 'stream_error');
      yield record;
    }
  }

  status(): Promise<ServerStatus> {
    return this.get<ServerStatus>('/admin/status');
  }

  health(): Promise<ServerHealth> {
    return this.get<ServerHealth>('/admin/health');
  }

  /** Loads `model` (the default where left out) through the admin API. */
  load(model?: string): Promise<LoadReply> {
    return this.post<LoadReply>('/admin/load', model === undefined ? {} : { model });
  }

  unload(): Promise<UnloadReply> {
    return this.post<UnloadReply>('/admin/unload', {});
  }
}
