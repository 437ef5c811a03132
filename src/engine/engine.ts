/**
 * The main thread's side of the MLX worker. It owns the model's lifecycle (load on demand,
 * unload on request or when idle, switch models), admits generation requests (at most
 * --max-batch at a time reach the worker, each once its KV cache fits the model's KV budget;
 * up to --max-queue wait here), gives each a cancellation slot in shared memory and turns the
 * worker's port messages into events. Lifecycle changes run one at a time; a change waits
 * until no generation holds the model.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import type { Logger } from 'pino';
import { ServeError } from '../../core/errors.ts';
import { collectGarbage } from '../../core/gc.ts';
import type { DeviceRelease } from '../../core/device-memory.ts';
import { releaseFreeMemory } from '../runtime/malloc-trim.ts';
import { describeGguf } from '../../core/gguf/describe.ts';
import { isGgufPath } from '../../core/gguf/format.ts';
import { kvBudget, llamaContextShape, planLoad, type KvBudget, type MemoryBudget, type WeightsPolicy } from '../models/footprint.ts';
import { packagePath, THREAD_POOL_ADDON, WORKER_BUNDLE } from '../paths.ts';
import type { ModelEntry, ModelRegistry } from '../models/registry.ts';
import { CANCEL_SLOTS, CancelFlags, createCancelBuffer } from '../../core/cancel-flags.ts';
import type { Telemetry } from '../../core/telemetry.ts';
import { Admission, KvNeed, promptTokenBound, type Ticket } from './admission.ts';
import { PromptTokenizerThread } from './prompt-tokenizer.ts';
import type { GenerationRequest, GenerationStats, LoadResult, LoadSpec, StreamEvent, WeightPlacement, WorkerData, WorkerReply, WorkerTask } from '../../core/protocol.ts';

/** Bundled, this file is dist/server.js and the worker is bundled beside it; through tsx, both are TypeScript. */
const WORKER = import.meta.url.endsWith('.ts') ? packagePath('workers', 'mlx-worker.ts') : WORKER_BUNDLE;

/** llama.cpp's own assumption for a GGUF whose header gives no trained context length. */
const LLAMA_DEFAULT_TRAIN_CONTEXT = 4096;

export interface LoadedInfo extends LoadResult {
  path: string;
  /** What the worker was asked to load; generation tasks carry it, so a fresh worker loads the same. */
  spec: LoadSpec;
  loadedAt: Date;
  kv: KvBudget;
}

/** The worker's events for a request, and the moment it left the engine's queue for the worker. */
export type EngineEvent = StreamEvent | { type: 'admitted' };

/** The KV budget now: what running requests hold of it. */
export interface KvUsage {
  bytesPerToken: number;
  budgetBytes: number;
  reservedBytes: number;
}

export interface UnloadResult {
  name: string;
  freedBytes: number;
  modelBytes: number;
  unloadMs: number;
}

export interface GenerationHandle {
  /** Resolves with the final stats, or rejects with a ServeError. */
  readonly done: Promise<GenerationStats>;
  cancel(): void;
}

export interface EngineOptions {
  registry: ModelRegistry;
  telemetry: Telemetry;
  logger: Logger;
  idleTimeoutSeconds: number;
  maxQueue: number;
  /** 0: no limit. */
  requestTimeoutSeconds: number;
  /** Requests running in the worker at once; also handed to it (see WorkerData). */
  maxBatch: number;
  /** Tokens per sequence of a GGUF model's llama.cpp context (--gguf-context; 0: its trained context). */
  ggufContext: number;
  defaultMaxTokens: number;
  memory: MemoryBudget;
  /** Bytes of freed buffers MLX's Metal allocator keeps for reuse (--mlx-cache-limit). */
  mlxCacheLimitBytes: number;
  weights: WeightsPolicy;
  /** Nice value the worker gives every thread but the main one (--engine-nice). */
  engineNice: number;
}

/** Why a generation was cancelled; a client that left gets nothing, the others get an error. */
type CancelReason = 'client' | 'timeout' | 'shutdown' | 'kv_budget';

const cancellationError: Record<Exclude<CancelReason, 'client' | 'kv_budget'>, () => ServeError> = {
  timeout: () => new ServeError('request_timeout', 'the request took longer than --request-timeout and was cancelled'),
  shutdown: () => new ServeError('shutting_down', 'the server is shutting down; the generation was cancelled'),
};

/** What MLX holds on the GPU: in use, and freed but cached for reuse. */
const held = (counters: DeviceRelease['before']): number => counters.activeBytes + counters.cacheBytes;

/** One lifecycle change at a time, in arrival order. */
class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(job: () => Promise<T>): Promise<T> {
    const result = this.tail.then(job, job);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export class Engine {
  /** The pool of one worker, started and checked; null until needed and after a discard. */
  private workerReady: Promise<Piscina> | null = null;
  private loaded: LoadedInfo | null = null;
  private leases = 0;
  private drained: (() => void)[] = [];
  private readonly lifecycle = new SerialQueue();
  private readonly freeSlots: number[] = Array.from({ length: CANCEL_SLOTS }, (_, i) => CANCEL_SLOTS - 1 - i);
  private readonly cancelFlags = new CancelFlags(createCancelBuffer());
  private idleTimer: NodeJS.Timeout | null = null;
  /** How long the loaded model stays after its last request (Ollama's keep_alive); null: until unloaded on request. */
  private keepAliveMs: number | null;
  private closed = false;
  /** The worker died under us: its replacement holds no model, so the next acquire reloads. */
  private workerLost = false;
  /** Generations accepted and not yet finished (waiting or running), so shutdown can cancel them. */
  private readonly inFlight = new Set<(reason: CancelReason) => void>();
  private readonly admission: Admission;
  /** The loaded model's KV arithmetic; null while none is loaded. */
  private kvNeed: KvNeed | null = null;
  /** The loaded MLX model's prompt tokenizer, on its own thread; null while none is loaded, and for GGUF models (llama.cpp tokenizes). */
  private promptTokenizer: PromptTokenizerThread | null = null;

  constructor(private readonly options: EngineOptions) {
    const { telemetry } = options;
    this.admission = new Admission(Math.min(options.maxBatch, CANCEL_SLOTS));
    telemetry.write('startedAtMs', Date.now());
    telemetry.write('lastActivityMs', Date.now());
    this.keepAliveMs = this.defaultKeepAliveMs;
    this.idleTimer = setInterval(() => void this.checkIdle(), options.idleTimeoutSeconds > 0 ? Math.min(1000, options.idleTimeoutSeconds * 250) : 1000);
    this.idleTimer.unref();
  }

  /** --idle-timeout as a keep-alive: what a request that says nothing about it gets. */
  get defaultKeepAliveMs(): number | null {
    return this.options.idleTimeoutSeconds > 0 ? this.options.idleTimeoutSeconds * 1000 : null;
  }

  /**
   * Sets how long the loaded model stays after its last request (null: until unloaded on
   * request; 0: unload as soon as nothing uses it); an unload resets it to --idle-timeout.
   * Resolves once a model whose time is up has been unloaded.
   */
  keepAlive(ms: number | null): Promise<void> {
    this.keepAliveMs = ms;
    return this.checkIdle();
  }

  /** When the loaded model will be unloaded if no request comes; null when it stays. */
  get expiresAt(): Date | null {
    if (!this.loaded || this.keepAliveMs === null) return null;
    const busy = this.leases > 0 || this.options.telemetry.queued > 0;
    return new Date((busy ? Date.now() : this.options.telemetry.read('lastActivityMs')) + this.keepAliveMs);
  }

  get idleTimeoutSeconds(): number {
    return this.options.idleTimeoutSeconds;
  }

  get loadedModel(): LoadedInfo | null {
    return this.loaded;
  }

  /** Whether a new request would be admitted now: not shutting down and the queue has room. */
  get accepting(): boolean {
    return !this.closed && this.options.telemetry.queued < this.options.maxQueue;
  }

  get shuttingDown(): boolean {
    return this.closed;
  }

  get maxQueue(): number {
    return this.options.maxQueue;
  }

  /** The MLX worker thread: it exists only while a model is loaded (or loading). */
  get workerStatus(): 'healthy' | 'starting' | 'no_worker' | 'failed' {
    if (this.workerLost) return 'failed';
    if (this.loaded) return 'healthy';
    return this.workerReady ? 'starting' : 'no_worker';
  }

  get kvUsage(): KvUsage | null {
    if (!this.loaded) return null;
    return { bytesPerToken: this.loaded.kv.bytesPerToken, budgetBytes: this.loaded.kv.budgetBytes, reservedBytes: this.admission.reservedBytes };
  }

  /**
   * Starts a generation; the model is loaded (or switched) first if needed. The request waits
   * (counted as queued) until a running place is free and its KV cache fits the budget.
   */
  generate(asked: GenerationRequest, model: ModelEntry, onEvent: (event: EngineEvent) => void): GenerationHandle {
    const { telemetry, logger } = this.options;
    let request = this.withTokenLimit(asked);
    const newTokens = typeof request.maxTokens === 'number' ? request.maxTokens : null;
    if (this.closed) throw cancellationError.shutdown();
    if (telemetry.queued >= this.options.maxQueue) {
      telemetry.increment('requestsRejected');
      throw new ServeError('queue_full', `the server is at capacity (${this.options.maxQueue} requests waiting, --max-queue); retry shortly`);
    }
    telemetry.increment('requestsTotal');
    telemetry.addQueued(1);
    this.touch();
    const arrivedAt = performance.now();
    const leaveQueue = new AbortController();
    let slot: number | null = null;
    let tokensSeen = 0;
    const cancellation: { reason: CancelReason | null; error: ServeError | null; tokensSeen: number } = { reason: null, error: null, tokensSeen: 0 };
    const cancel = (reason: CancelReason, error: ServeError | null = null): void => {
      if (cancellation.reason) return;
      Object.assign(cancellation, { reason, error, tokensSeen });
      if (slot !== null) this.cancelFlags.request(slot);
      leaveQueue.abort();
    };
    this.inFlight.add(cancel);
    const timeout = this.options.requestTimeoutSeconds > 0 ? setTimeout(() => cancel('timeout'), this.options.requestTimeoutSeconds * 1000) : null;
    const done = (async (): Promise<GenerationStats> => {
      let leased = false;
      let ticket: Ticket | null = null;
      try {
        const ready = await this.leaseUnlessAbandoned(model, leaveQueue.signal);
        const kv = this.kvNeed as KvNeed;
        if (ready) {
          leased = true;
          model = ready;
          ticket = await this.admit(request, newTokens, kv, leaveQueue.signal);
        }
        let stats: GenerationStats = { finishReason: 'cancelled', promptTokens: 0, cachedTokens: 0, completionTokens: 0, promptMs: 0, decodeMs: 0 };
        if (ticket) {
          const admitted = ticket;
          slot = this.freeSlots.pop() as number;
          this.cancelFlags.clear(slot);
          telemetry.addQueued(-1);
          telemetry.addActive(1);
          logger.debug({ event: 'admitted', reqId: request.id, waitedMs: Math.round(performance.now() - arrivedAt), kvBytes: admitted.bytes }, 'request admitted to the worker');
          onEvent({ type: 'admitted' });
          /** Once the prompt's tokens are counted: the reservation shrinks to the exact need, or the request is refused. */
          const fit = (promptTokens: number): ServeError | null => {
            const refusal = kv.refusal(promptTokens, newTokens);
            if (!refusal) admitted.resize(kv.bytes(kv.tokens(promptTokens, newTokens)));
            return refusal;
          };
          // Tokenized once admitted, as the worker used to: a request in the tokenizer holds a running place, not a waiting one.
          request = await this.tokenized(request);
          const counted = request.prompt.kind === 'tokens' ? fit(request.prompt.ids.length) : null;
          if (counted) throw counted;
          if (!cancellation.reason) {
            stats = await this.run(request, slot, (event) => {
              if (cancellation.reason === 'kv_budget') return;
              if (event.type === 'started') {
                logger.debug({ event: 'generation_start', reqId: request.id, promptTokens: event.promptTokens, cachedTokens: event.cachedTokens }, 'the worker took the request');
                const refusal = fit(event.promptTokens);
                if (refusal) return cancel('kv_budget', refusal);
              }
              if (event.type === 'text') tokensSeen = event.tokens;
              onEvent(event);
            });
          }
        }
        const { reason } = cancellation;
        if (reason) {
          const waitingFor = ticket ? undefined : leased ? 'admission' : 'model';
          logger.info({ event: 'cancelled', reqId: request.id, reason, whileWaiting: ticket === null, waitingFor, tokensAfterCancel: Math.max(0, stats.completionTokens - cancellation.tokensSeen) }, 'generation cancelled');
          if (reason !== 'client') throw cancellation.error ?? cancellationError[reason as Exclude<CancelReason, 'client' | 'kv_budget'>]();
        }
        return stats;
      } catch (error) {
        telemetry.increment('requestsFailed');
        throw ServeError.from(error);
      } finally {
        if (timeout) clearTimeout(timeout);
        this.inFlight.delete(cancel);
        if (ticket) {
          telemetry.addActive(-1);
          this.freeSlots.push(slot as number);
          ticket.release();
        } else telemetry.addQueued(-1);
        if (leased) this.release();
        this.touch();
      }
    })();
    return { done, cancel: () => cancel('client') };
  }

  /**
   * Waits for a running place and room for the request's KV cache; null when the wait was
   * abandoned. Before the worker has counted the prompt, text is reserved at an upper estimate
   * (corrected when the worker reports the exact count, before any of its KV is allocated); a
   * request whose exact need could never fit is refused here, without waiting.
   */
  private admit(request: GenerationRequest, newTokens: number | null, kv: KvNeed, signal: AbortSignal): Promise<Ticket | null> {
    const prompt = promptTokenBound(request);
    if (prompt.exact || newTokens === null) {
      const refusal = kv.refusal(prompt.exact ? prompt.tokens : null, newTokens);
      if (refusal) throw refusal;
    }
    return this.admission.enter(kv.bytes(kv.tokens(prompt.tokens, newTokens)), signal);
  }

  /** The request with its prompt as token ids, counted off the MLX thread; as it came for a GGUF model. */
  private async tokenized(request: GenerationRequest): Promise<GenerationRequest> {
    if (!this.promptTokenizer || request.prompt.kind === 'tokens') return request;
    return { ...request, prompt: { kind: 'tokens', ids: await this.promptTokenizer.tokenize(request.prompt) } };
  }

  /** A request that set no limit gets --default-max-tokens (0: until the context is full). */
  private withTokenLimit(request: GenerationRequest): GenerationRequest {
    if (request.maxTokens !== null) return request;
    return { ...request, maxTokens: this.options.defaultMaxTokens > 0 ? this.options.defaultMaxTokens : 'context', defaultLimit: true };
  }

  /**
   * Runs one worker through the runtime check and lets it go before any model is loaded. A
   * broken MLX or BLAS fails start-up, not a client's first request; and what the first worker
   * leaves in the process for good (the native libraries' code) is already there when the
   * pre-load memory baseline is taken, so an unload is measured against what the model held.
   */
  async start(): Promise<void> {
    await this.lifecycle.run(async () => {
      await this.worker();
      await this.discardWorker();
    });
  }

  /** Loads a model without generating (POST /admin/load, an empty Ollama prompt). */
  async load(model: ModelEntry): Promise<LoadedInfo> {
    this.touch();
    if (model.fetch) model = await model.fetch();
    await this.acquire(model);
    this.release();
    // The idle time counts from when the model is ready, or a load slower than --idle-timeout would be undone at once.
    this.touch();
    return this.loaded as LoadedInfo;
  }

  /** Unloads at once when idle, else after the running generations finish. */
  unload(): Promise<UnloadResult> {
    return this.lifecycle.run(async () => {
      if (!this.loaded) throw new ServeError('nothing_loaded', 'no model is loaded');
      return this.unloadNow();
    });
  }

  /**
   * Stops admitting work, lets running generations finish for up to `graceMs`, then cancels
   * the rest (their clients get a shutdown error), unloads and stops the worker.
   */
  async close(graceMs = 0): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearInterval(this.idleTimer);
    const drained = this.leases === 0 ? Promise.resolve() : new Promise<void>((resolve) => this.drained.push(resolve));
    const grace = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref());
    if ((await Promise.race([drained, grace])) === 'timeout') {
      this.options.logger.warn({ event: 'shutdown_cancel', running: this.inFlight.size }, 'cancelling generations still running at shutdown');
      for (const cancel of this.inFlight) cancel('shutdown');
    }
    await this.lifecycle.run(async () => {
      if (this.loaded) await this.unloadNow();
      await this.discardWorker();
    });
  }

  private touch(): void {
    this.options.telemetry.write('lastActivityMs', Date.now());
  }

  private checkIdle(): Promise<void> {
    const { telemetry, logger } = this.options;
    const expired = (): boolean =>
      this.loaded !== null && this.keepAliveMs !== null && this.leases === 0 && telemetry.queued === 0 && Date.now() - telemetry.read('lastActivityMs') >= this.keepAliveMs;
    if (!expired()) return Promise.resolve();
    return this.lifecycle
      .run(async () => {
        if (!expired()) return;
        const idleSeconds = (this.keepAliveMs ?? 0) / 1000;
        const result = await this.unloadNow();
        logger.info({ event: 'idle_unload', idleSeconds, ...result }, 'model unloaded after idle timeout');
      })
      .catch((error: unknown) => logger.error({ err: error }, 'idle unload failed'));
  }

  /**
   * The model (fetched if it had to be) with a lease taken on it, or null as soon as `signal`
   * aborts: a request whose client leaves during a download or a load leaves the queue at once,
   * and a load it was still waiting its turn for never starts.
   */
  private async leaseUnlessAbandoned(model: ModelEntry, signal: AbortSignal): Promise<ModelEntry | null> {
    const lease = (async (): Promise<ModelEntry | null> => {
      const fetched = model.fetch ? await model.fetch() : model;
      return (await this.acquire(fetched, signal)) ? fetched : null;
    })();
    const abandoned = new Promise<null>((resolve) => {
      if (signal.aborted) resolve(null);
      else signal.addEventListener('abort', () => resolve(null), { once: true });
    });
    // No lease is left behind: acquire takes one only while the signal has not aborted, and the
    // race settles in that same turn of the event loop, before any later abort can run.
    return Promise.race([lease, abandoned]);
  }

  /**
   * Takes a lease on `model`, loading or switching to it first; the lease blocks unloading.
   * Resolves false, having loaded nothing, when `signal` has aborted by the time its turn comes.
   */
  private acquire(model: ModelEntry, signal?: AbortSignal): Promise<boolean> {
    if (this.closed) return Promise.reject(new ServeError('queue_full', 'the server is shutting down'));
    return this.lifecycle.run(async () => {
      if (signal?.aborted) return false;
      if (this.workerLost) {
        this.workerLost = false;
        this.loaded = null;
        await this.discardWorker();
      }
      if (this.loaded?.path !== model.path) {
        if (this.loaded) await this.unloadNow();
        await this.loadNow(model);
      }
      if (signal?.aborted) return false;
      this.leases++;
      return true;
    });
  }

  private release(): void {
    this.leases--;
    if (this.leases === 0) for (const resolve of this.drained.splice(0)) resolve();
  }

  private async waitForLeases(): Promise<void> {
    if (this.leases > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
  }

  private createPool(): Piscina {
    return new Piscina({
      filename: WORKER,
      minThreads: 1,
      maxThreads: 1,
      concurrentTasksPerWorker: CANCEL_SLOTS,
      atomics: 'async',
      idleTimeout: Number.POSITIVE_INFINITY,
      workerData: {
        settings: {
          maxBatch: this.options.maxBatch,
          prefillChunk: this.options.memory.prefillChunk,
          promptCacheBytes: this.options.memory.promptCacheBytes,
          threadPoolAddon: THREAD_POOL_ADDON,
          cacheLimitBytes: this.options.mlxCacheLimitBytes,
          memoryLimitBytes: this.options.memory.limitBytes,
          engineNice: this.options.engineNice,
        },
        telemetry: this.options.telemetry.buffers,
        cancelFlags: this.cancelFlags.buffer,
      } satisfies WorkerData,
    });
  }

  /** The worker, started and checked first when there is none (workers/runtime-check.ts). */
  private worker(): Promise<Piscina> {
    this.workerReady ??= this.startWorker().catch((error: unknown) => {
      this.workerReady = null;
      throw error;
    });
    return this.workerReady;
  }

  private async startWorker(): Promise<Piscina> {
    const started = performance.now();
    const pool = this.createPool();
    const reply = (await pool.run({ op: 'check' } satisfies WorkerTask)) as WorkerReply;
    if (!reply.ok) {
      await pool.destroy();
      this.options.logger.error({ event: 'runtime_check_failed', err: reply.error.message }, 'the MLX worker failed its runtime check');
      throw ServeError.fromShape(reply.error);
    }
    this.options.logger.debug({ event: 'worker_started', ms: Math.round(performance.now() - started) }, 'MLX worker started and checked');
    return pool;
  }

  private async task(task: WorkerTask, transferList?: Transferable[]): Promise<WorkerReply> {
    const pool = await this.worker();
    try {
      return (await pool.run(task, { transferList: transferList as never })) as WorkerReply;
    } catch (error) {
      this.workerLost = true;
      this.options.logger.error({ event: 'worker_failed', err: error }, 'the MLX worker failed; the model will be reloaded on the next request');
      throw new ServeError('worker_failed', `the MLX worker failed: ${(error as Error).message}`);
    }
  }

  private async loadNow(model: ModelEntry): Promise<void> {
    const { telemetry, logger } = this.options;
    const plan = planLoad(model.name, model.path, this.options.weights, this.options.memory, telemetry.read('deviceWorkingSetBytes'));
    telemetry.modelState = 'loading';
    logger.info({ event: 'load_start', model: model.name, path: model.path }, 'loading model');
    const started = performance.now();
    // A GGUF file is there before its load and its context is sized from the budget; the built-in
    // MLX model's files are written by the worker's first load, so its budget is read after.
    const ggufBudget = isGgufPath(model.path) ? kvBudget(model.path, plan.placement, plan.availableBytes, this.options.memory) : null;
    const spec = this.loadSpec(model, plan.placement, ggufBudget);
    // Read alongside the worker's load (seconds each on 2 cores) when its files are there; the
    // built-in model's are written by the worker's first load, so then it starts after.
    const tokenized = !isGgufPath(model.path);
    if (tokenized && existsSync(join(model.path, 'tokenizer.json'))) this.promptTokenizer = new PromptTokenizerThread(model.path);
    let reply: WorkerReply;
    try {
      reply = await this.task({ op: 'load', model: spec });
    } catch (error) {
      await this.discardWorker();
      throw error;
    }
    if (!reply.ok || !reply.load) {
      await this.discardWorker();
      const error = reply.ok ? new ServeError('worker_failed', 'the worker returned no load result') : ServeError.fromShape(reply.error);
      logger.warn({ event: 'load_failed', model: model.name, err: error.message }, 'model load failed');
      throw error;
    }
    if (tokenized) {
      this.promptTokenizer ??= new PromptTokenizerThread(model.path);
      try {
        await this.promptTokenizer.ready;
      } catch (error) {
        await this.discardWorker();
        throw error;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const budget = ggufBudget ?? kvBudget(model.path, plan.placement, plan.availableBytes, this.options.memory);
    // A llama.cpp context holds only the KV cells it allocated at load.
    const kv = spec.llamaContext ? { ...budget, budgetBytes: spec.llamaContext.contextSize * spec.llamaContext.sequences * budget.bytesPerToken } : budget;
    this.loaded = { ...reply.load, path: model.path, spec, loadedAt: new Date(), kv };
    this.kvNeed = new KvNeed(kv, reply.load.contextLength);
    this.admission.setBudget(kv.budgetBytes, reply.load.sequences);
    telemetry.modelState = 'loaded';
    telemetry.write('loadedAtMs', Date.now());
    telemetry.write('loadSeconds', seconds);
    telemetry.increment('modelLoads');
    const { contextLength, sequences } = reply.load;
    logger.info({ event: 'loaded', model: model.name, bytes: reply.load.bytes, seconds, rssMb: process.memoryUsage.rss() / 2 ** 20, kvBudgetBytes: kv.budgetBytes, kvBytesPerToken: kv.bytesPerToken, contextLength, sequences }, 'model loaded');
  }

  /** What the worker is to load; a GGUF model's llama.cpp context is sized here, from the KV budget its load leaves. */
  private loadSpec(model: ModelEntry, placement: WeightPlacement, kv: KvBudget | null): LoadSpec {
    const spec: LoadSpec = { name: model.name, path: model.path, builtin: model.builtin, placement };
    if (!kv) return spec;
    return { ...spec, llamaContext: llamaContextShape(kv, describeGguf(model.path).contextLength ?? LLAMA_DEFAULT_TRAIN_CONTEXT, this.options.maxBatch, this.options.ggufContext) };
  }

  /** Caller holds the lifecycle queue. Terminating the worker frees every array it held. */
  private async unloadNow(): Promise<UnloadResult> {
    const { telemetry, logger } = this.options;
    const loaded = this.loaded as LoadedInfo;
    await this.waitForLeases();
    telemetry.modelState = 'unloading';
    const started = performance.now();
    const rssBefore = process.memoryUsage.rss();
    const device = await this.discardWorker();
    this.loaded = null;
    this.kvNeed = null;
    this.keepAliveMs = this.defaultKeepAliveMs;
    telemetry.write('modelBytes', 0);
    telemetry.write('loadedAtMs', 0);
    telemetry.increment('modelUnloads');
    const result: UnloadResult = {
      name: loaded.name,
      modelBytes: loaded.bytes,
      freedBytes: Math.max(0, device ? held(device.before) - held(device.after) : rssBefore - process.memoryUsage.rss()),
      unloadMs: performance.now() - started,
    };
    logger.info({ event: 'unloaded', ...result, ...(device ? { mlxMemory: device } : {}) }, 'model unloaded');
    return result;
  }

  /**
   * Ends the worker, if there is one: first its release step (the model dropped and collected,
   * MLX's Metal buffer cache emptied, which the thread's exit alone does not do), then it is
   * terminated, the main thread's share of its traffic collected and the allocator's free pages
   * returned, so the memory measured next is what the process still holds. Returns MLX's GPU
   * counters around the release; null on the CPU, where the process figures tell.
   */
  private async discardWorker(): Promise<DeviceRelease | null> {
    const ready = this.workerReady;
    this.workerReady = null;
    await this.promptTokenizer?.close();
    this.promptTokenizer = null;
    let device: DeviceRelease | null = null;
    if (ready) {
      const pool = await ready.catch(() => null);
      if (pool) {
        const reply = (await pool.run({ op: 'release' } satisfies WorkerTask).catch(() => null)) as WorkerReply | null;
        if (reply?.ok && reply.release && this.options.telemetry.read('deviceWorkingSetBytes') > 0) device = reply.release;
        await pool.destroy();
      }
      collectGarbage(true);
      releaseFreeMemory();
    }
    this.options.telemetry.modelState = 'unloaded';
    return device;
  }

  private async run(request: GenerationRequest, slot: number, onEvent: (event: StreamEvent) => void): Promise<GenerationStats> {
    const { port1, port2 } = new MessageChannel();
    const finished = new Promise<GenerationStats>((resolve, reject) => {
      port1.on('message', (event: StreamEvent) => {
        if (event.type === 'error') reject(ServeError.fromShape(event.error));
        else {
          onEvent(event);
          if (event.type === 'done') {
            const { type: _type, ...stats } = event;
            resolve(stats);
          }
        }
      });
      port1.on('close', () => reject(new ServeError('worker_failed', 'the MLX worker stopped before the generation finished')));
    });
    const task: WorkerTask = {
      op: 'generate',
      request,
      slot,
      port: port2,
    };
    const reply = this.task(task, [port2 as unknown as Transferable]);
    try {
      const [stats] = await Promise.all([finished, reply]);
      return stats;
    } finally {
      port1.close();
    }
  }
}
