/** The soak suite talks to a server only over HTTP, like any client; this is that client. */
import type { ServerStatus } from '../src/api/admin.ts';

export type { ServerStatus };

export interface ServerHealth {
  status: string;
  model_state?: string;
  active_requests: number;
  queued_requests: number;
}

export interface GenerateOptions {
  prompt: string;
  maxTokens: number;
  /** Sampling seed; with temperature 0 the output is fully determined by the prompt. */
  seed?: number;
  temperature?: number;
  stream?: boolean;
  model?: string;
  /** Forces a wire shape; otherwise Ollama's where the server has it. */
  api?: GenerationApi;
  /** Called once, when the first streamed text arrives (the request is then surely running). */
  onFirstText?: () => void;
}

export interface Generation {
  ok: boolean;
  status: number;
  text: string;
  /** Streamed text chunks; 1 for a non-streamed reply. */
  chunks: number;
  completionTokens: number | null;
  latencyMs: number;
  error: string | null;
}

/** Which wire shape generation requests use: Ollama's /api/generate where the server has it, else OpenAI's. */
export type GenerationApi = 'ollama' | 'openai';

const trimSlash = (url: string): string => url.replace(/\/+$/, '');

export class SoakClient {
  readonly url: string;
  readonly model: string | undefined;
  private readonly timeoutMs: number;
  private api: GenerationApi | null = null;
  private defaultModel: string | null = null;

  constructor(url: string, model: string | undefined, timeoutMs = 600_000) {
    this.url = trimSlash(url);
    this.model = model;
    this.timeoutMs = timeoutMs;
  }

  async getJson<T>(path: string): Promise<T> {
    const response = await fetch(this.url + path, { signal: AbortSignal.timeout(30_000) });
    if (!response.ok) throw new Error(`GET ${path}: HTTP ${response.status}`);
    return (await response.json()) as T;
  }

  async postJson(path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
    const response = await fetch(this.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await response.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    } catch {
      parsed = { raw: text };
    }
    return { status: response.status, body: parsed };
  }

  status(): Promise<ServerStatus> {
    return this.getJson<ServerStatus>('/admin/status');
  }

  health(): Promise<ServerHealth> {
    return this.getJson<ServerHealth>('/admin/health');
  }

  /**
   * Resident memory once it stops falling: a worker that is still exiting, or a collection still
   * running, right after an unload would otherwise read as a leak. A leak stays after settling.
   */
  async settledRssGb(maxWaitMs = 10_000): Promise<number> {
    let last = (await this.status()).memory.rss_gb;
    for (const started = performance.now(); performance.now() - started < maxWaitMs; ) {
      await sleep(500);
      const now = (await this.status()).memory.rss_gb;
      if (Math.abs(now - last) < 0.002) return now;
      last = now;
    }
    return last;
  }

  unload(): Promise<{ status: number; body: Record<string, unknown> }> {
    return this.postJson('/admin/unload', {});
  }

  /**
   * Malformed JSON is a 400 where /api/generate exists and a 404 where it does not; an empty
   * object would not do, Ollama answers it by loading the model.
   */
  async generationApi(): Promise<GenerationApi> {
    if (this.api === null) this.api = (await this.postJson('/api/generate', '{')).status === 404 ? 'openai' : 'ollama';
    return this.api;
  }

  /** Ollama's API names a model in every request; OpenAI's lets the server pick its default. */
  async serverDefaultModel(): Promise<string> {
    if (this.defaultModel === null) {
      const listed = await this.getJson<{ data: { id: string }[] }>('/v1/models');
      const status = await this.status();
      const name = status.model?.default ?? listed.data[0]?.id;
      if (!name) throw new Error('the server lists no models');
      this.defaultModel = name;
    }
    return this.defaultModel;
  }

  /** Never throws: a failed request is a Generation with ok false, so load generators can count it. */
  async generate(options: GenerateOptions): Promise<Generation> {
    const started = performance.now();
    const result: Generation = { ok: false, status: 0, text: '', chunks: 0, completionTokens: null, latencyMs: 0, error: null };
    try {
      const api = options.api ?? (await this.generationApi());
      const model = options.model ?? this.model ?? (api === 'ollama' ? await this.serverDefaultModel() : undefined);
      const stream = options.stream ?? false;
      const temperature = options.temperature ?? 0;
      const body =
        api === 'ollama'
          ? { model, prompt: options.prompt, stream, options: { num_predict: options.maxTokens, temperature, seed: options.seed ?? 0 } }
          : { model, prompt: options.prompt, stream, max_tokens: options.maxTokens, temperature, seed: options.seed ?? 0, ignore_eos: true };
      const response = await fetch(this.url + (api === 'ollama' ? '/api/generate' : '/v1/completions'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      result.status = response.status;
      if (!response.ok || !response.body) {
        result.error = `HTTP ${response.status}: ${(await response.text()).slice(0, 300)}`;
        return result;
      }
      const events = stream ? readEvents(response.body, api) : singleEvent(response);
      for await (const event of events) {
        if (event.error) throw new Error(event.error);
        if (event.text) {
          if (result.chunks === 0) options.onFirstText?.();
          result.text += event.text;
          result.chunks++;
        }
        if (event.completionTokens !== null) result.completionTokens = event.completionTokens;
      }
      if (!stream) result.chunks = 1;
      result.ok = true;
    } catch (error) {
      result.error = error instanceof Error ? error.message : String(error);
    } finally {
      result.latencyMs = performance.now() - started;
    }
    return result;
  }
}

interface WireEvent {
  text: string;
  completionTokens: number | null;
  error: string | null;
}

/** Reads one event from an OpenAI completion or Ollama generate body (they share no field names). */
function wireEvent(data: Record<string, unknown>): WireEvent {
  const error = data.error as { message?: string } | string | undefined;
  if (error) return { text: '', completionTokens: null, error: typeof error === 'string' ? error : (error.message ?? 'error') };
  if (typeof data.response === 'string') {
    return { text: data.response, completionTokens: typeof data.eval_count === 'number' ? data.eval_count : null, error: null };
  }
  const choices = (data.choices as { text?: string }[] | undefined) ?? [];
  const usage = data.usage as { completion_tokens?: number } | undefined;
  return { text: choices.map((c) => c.text ?? '').join(''), completionTokens: usage?.completion_tokens ?? null, error: null };
}

async function* singleEvent(response: Response): AsyncGenerator<WireEvent> {
  yield wireEvent((await response.json()) as Record<string, unknown>);
}

/** SSE (`data: {...}` lines, `[DONE]` at the end) for OpenAI; one JSON object a line for Ollama. */
async function* readEvents(body: ReadableStream<Uint8Array>, api: GenerationApi): AsyncGenerator<WireEvent> {
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of body) {
    buffered += decoder.decode(chunk, { stream: true });
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) {
      const payload = api === 'openai' ? (line.startsWith('data: ') ? line.slice(6).trim() : '') : line.trim();
      if (payload === '' || payload === '[DONE]') continue;
      yield wireEvent(JSON.parse(payload) as Record<string, unknown>);
    }
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls /admin/status in the background and keeps the largest resident set seen. */
export class MemorySampler {
  peakRssGb = 0;
  samples = 0;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> | null = null;

  constructor(
    private readonly client: SoakClient,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sample(), this.intervalMs);
  }

  sample(): Promise<void> {
    this.inFlight ??= this.client
      .status()
      .then((status) => {
        this.peakRssGb = Math.max(this.peakRssGb, status.memory.rss_gb);
        this.samples++;
      })
      // A missed sample under load is not a failure of the server; the requests' own results are.
      .catch(() => undefined)
      .finally(() => {
        this.inFlight = null;
      });
    return this.inFlight;
  }

  async stop(): Promise<number> {
    if (this.timer) clearInterval(this.timer);
    await this.inFlight;
    await this.sample();
    return this.peakRssGb;
  }
}
