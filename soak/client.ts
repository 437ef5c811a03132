/**
 * The soak suite's load generator: it talks to a server only over HTTP, like any client, through
 * our one API client, and counts failed requests instead of throwing them.
 */
import { ApiClient, generationBody, generationEvent, postJson, ROUTE_PATHS, streamRecords, trimBase, type ApiRoute, type JsonReply, type ServerHealth, type ServerStatus } from '../src/client/api-client.ts';

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

const GENERATION_ROUTES: Record<GenerationApi, ApiRoute> = { ollama: 'ollama-generate', openai: 'openai-completions' };

/** Status polls give up sooner than generations: a server that cannot answer them in this long is stuck. */
const POLL_TIMEOUT_MS = 30_000;

export class SoakClient {
  readonly url: string;
  readonly model: string | undefined;
  private readonly timeoutMs: number;
  private readonly polls: ApiClient;
  private api: GenerationApi | null = null;
  private defaultModel: string | null = null;

  constructor(url: string, model: string | undefined, timeoutMs = 600_000) {
    this.url = trimBase(url);
    this.model = model;
    this.timeoutMs = timeoutMs;
    this.polls = new ApiClient(this.url, { timeoutMs: POLL_TIMEOUT_MS });
  }

  /** Never throws for an error status: the caller judges it. */
  postJson(path: string, body: unknown): Promise<JsonReply<Record<string, unknown>>> {
    return postJson(this.url + path, body, AbortSignal.timeout(this.timeoutMs));
  }

  status(): Promise<ServerStatus> {
    return this.polls.status();
  }

  health(): Promise<ServerHealth> {
    return this.polls.health();
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

  unload(): Promise<JsonReply<Record<string, unknown>>> {
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
      const listed = await this.polls.get<{ data: { id: string }[] }>('/v1/models');
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
      const route = GENERATION_ROUTES[api];
      const body = generationBody({ route, model, prompt: options.prompt, maxTokens: options.maxTokens, stream, temperature: options.temperature ?? 0, seed: options.seed ?? 0 });
      const response = await fetch(this.url + ROUTE_PATHS[route], {
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
      const records = stream ? streamRecords(response.body, api === 'openai' ? 'sse' : 'ndjson') : singleRecord(response);
      for await (const record of records) {
        const event = generationEvent(record);
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

async function* singleRecord(response: Response): AsyncGenerator<Record<string, unknown>> {
  yield (await response.json()) as Record<string, unknown>;
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
