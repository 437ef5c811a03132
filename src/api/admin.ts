/**
 * Admin routes: health, status, queue, metrics and capabilities are answered from shared memory
 * alone; load and unload drive the engine. The probes (/health, /ready) are served on both ports.
 * Field names follow our API and, alongside, the names fleets' scripts read (docs/compatibility.md).
 */
import { badRequest } from '../../core/errors.ts';
import type { Exchange } from '../http/exchange.ts';
import { parseJsonObject, type Route } from '../http/server.ts';
import { openAiError } from './errors.ts';
import { PACKAGE_VERSION } from '../paths.ts';
import { deviceMemory } from '../../core/device-memory.ts';
import type { HeldWeights } from '../../core/protocol.ts';
import type { ModelStateName, Telemetry } from '../../core/telemetry.ts';
import type { Engine } from '../engine/engine.ts';
import type { WeightsPolicy } from '../models/footprint.ts';
import { sampleMemory } from '../telemetry/memory.ts';
import type { ListeningPorts, ServeContext } from './context.ts';
import { Fields } from './fields.ts';

/** GET /admin/status's answer: declared once, for the server that writes it and every client of ours that reads it. */
export interface ServerStatus {
  status: 'healthy';
  memory: MemoryStatus;
  requests: {
    total: number;
    active: number;
    active_requests: number;
    queued: number;
    failed: number;
    rejected: number;
    uptime: number;
    uptime_seconds: number;
    last_activity: string;
    idle_seconds: number;
  };
  model: {
    loaded: boolean;
    name: string | null;
    memory_gb: number;
    default: string;
    state: ModelStateName;
    type: string | null;
    weights: (HeldWeights & { policy: WeightsPolicy }) | null;
    context_length: number | null;
    loaded_at: string | null;
    load_seconds: number | null;
    loads: number;
    unloads: number;
  };
  tokens: { generated: number; prompt: number };
  worker: { healthy: boolean; status: Engine['workerStatus'] };
  ports: ListeningPorts;
  config: { idle_timeout_seconds: number; max_queue: number; max_batch: number; gguf_context: number; weights: WeightsPolicy; request_timeout_seconds: number };
  version: string;
  kv_cache: KvCacheStatus | null;
  idle_timeout_seconds: number;
}

/** POST /admin/load's answer (the first three fields under their older names too, for fleets' scripts). */
export interface LoadReply {
  status: 'success';
  model_name: string;
  memory_gb: number;
  load_time: number;
  model: string;
  model_type: string;
  model_memory_gb: number;
  load_seconds: number;
}

/** POST /admin/unload's answer. */
export interface UnloadReply {
  status: 'success';
  model_name: string;
  memory_freed_gb: number;
  unload_time: number;
  model: string;
  model_memory_gb: number;
  unload_seconds: number;
}

export interface MemoryStatus {
  active_memory_gb: number;
  peak_memory_gb: number;
  cache_memory_gb: number;
  process_active_memory_gb: number;
  rss_gb: number;
  baseline_rss_gb: number;
  model_loaded: boolean;
  model_memory_gb: number;
  device: 'gpu' | 'cpu';
  working_set_gb: number;
  source: string;
}

export interface KvCacheStatus {
  budget_bytes: number;
  reserved_bytes: number;
  bytes_per_token: number;
  max_running: number;
  max_waiting: number;
}

const GB = 1024 ** 3;
const gb = (bytes: number): number => Math.round((bytes / GB) * 10000) / 10000;

const uptimeSeconds = (telemetry: Telemetry): number => Math.round((Date.now() - telemetry.read('startedAtMs')) / 1000);

/**
 * The status's memory figures. On a GPU (Metal) active and peak are MLX's own counters, as mlx-lm
 * reports them, with its buffer cache and the process figure beside them; on a CPU, where MLX
 * counts nothing, they are the process's resident memory above the pre-load baseline.
 */
export function memoryStatus(telemetry: Telemetry): MemoryStatus {
  const memory = sampleMemory(telemetry);
  const device = deviceMemory(telemetry);
  return {
    active_memory_gb: gb(device ? device.activeBytes : memory.active),
    peak_memory_gb: gb(device ? device.peakBytes : memory.peak),
    cache_memory_gb: gb(device?.cacheBytes ?? 0),
    process_active_memory_gb: gb(memory.active),
    rss_gb: gb(memory.rss),
    baseline_rss_gb: gb(telemetry.read('baselineRssBytes')),
    model_loaded: telemetry.modelState === 'loaded',
    model_memory_gb: gb(telemetry.read('modelBytes')),
    device: device ? 'gpu' : 'cpu',
    working_set_gb: gb(device?.workingSetBytes ?? 0),
    source: device ? 'MLX Metal allocator (active, peak, cache); process_active_memory_gb is the resident set above the baseline' : 'process resident set (MLX reports no memory on a CPU device)',
  };
}

/** The loaded model's KV budget and what running requests hold of it; null when none is loaded. */
function kvCacheBody(ctx: ServeContext): KvCacheStatus | null {
  const kv = ctx.engine.kvUsage;
  return kv && { budget_bytes: kv.budgetBytes, reserved_bytes: kv.reservedBytes, bytes_per_token: kv.bytesPerToken, max_running: ctx.engine.loadedModel?.sequences ?? ctx.config.maxBatch, max_waiting: ctx.config.maxQueue };
}

export function statusBody(ctx: ServeContext): ServerStatus {
  const { telemetry, engine } = ctx;
  const loaded = engine.loadedModel;
  const state = telemetry.modelState;
  const lastActivity = telemetry.read('lastActivityMs');
  const uptime = uptimeSeconds(telemetry);
  const worker = engine.workerStatus;
  return {
    status: 'healthy',
    memory: memoryStatus(telemetry),
    requests: {
      total: telemetry.read('requestsTotal'),
      active: telemetry.active,
      active_requests: telemetry.active,
      queued: telemetry.queued,
      failed: telemetry.read('requestsFailed'),
      rejected: telemetry.read('requestsRejected'),
      uptime: uptime,
      uptime_seconds: uptime,
      last_activity: new Date(lastActivity).toISOString(),
      idle_seconds: Math.round((Date.now() - lastActivity) / 1000),
    },
    model: {
      loaded: state === 'loaded',
      name: loaded?.name ?? null,
      memory_gb: gb(telemetry.read('modelBytes')),
      default: ctx.registry.defaultName,
      state,
      type: loaded?.modelType ?? null,
      weights: loaded ? { ...loaded.weights, policy: ctx.config.weights } : null,
      context_length: loaded?.contextLength ?? null,
      loaded_at: loaded ? loaded.loadedAt.toISOString() : null,
      load_seconds: loaded ? telemetry.read('loadSeconds') : null,
      loads: telemetry.read('modelLoads'),
      unloads: telemetry.read('modelUnloads'),
    },
    tokens: { generated: telemetry.read('tokensGenerated'), prompt: telemetry.read('promptTokens') },
    worker: { healthy: worker !== 'failed', status: worker },
    ports: ctx.ports,
    config: {
      idle_timeout_seconds: engine.idleTimeoutSeconds,
      max_queue: engine.maxQueue,
      max_batch: ctx.config.maxBatch,
      gguf_context: ctx.config.ggufContext,
      weights: ctx.config.weights,
      request_timeout_seconds: ctx.config.requestTimeoutSeconds,
    },
    version: PACKAGE_VERSION,
    kv_cache: kvCacheBody(ctx),
    idle_timeout_seconds: engine.idleTimeoutSeconds,
  };
}

const health = (ctx: ServeContext): Record<string, unknown> => ({
  status: 'healthy',
  model_loaded: ctx.telemetry.modelState === 'loaded',
  model_state: ctx.telemetry.modelState,
  active_requests: ctx.telemetry.active,
  queued_requests: ctx.telemetry.queued,
  uptime_seconds: uptimeSeconds(ctx.telemetry),
  version: PACKAGE_VERSION,
});

/** A polled read answered from shared memory: logged at debug, always 200. */
const readRoute = (path: string, answer: () => object): Route => ({ method: 'GET', path, errors: openAiError, quiet: true, handler: (exchange) => exchange.json(200, answer()) });

/**
 * Load balancers' probes, on both ports and open without a key. Ready means a request sent now
 * would be admitted: a model that is not loaded yet still counts, since the first request loads it.
 */
export function probeRoutes(ctx: ServeContext): Route[] {
  return [
    readRoute('/health', () => health(ctx)),
    {
      method: 'GET',
      path: '/ready',
      errors: openAiError,
      quiet: true,
      handler: (exchange) => {
        const { engine, telemetry } = ctx;
        const ready = engine.accepting;
        const reason = ready ? null : engine.shuttingDown ? 'shutting_down' : 'queue_full';
        exchange.json(ready ? 200 : 503, { ready, reason, model_loaded: telemetry.modelState === 'loaded', queued_requests: telemetry.queued, max_queue: engine.maxQueue });
      },
    },
  ];
}

export function adminRoutes(ctx: ServeContext): Route[] {
  const optionalBody = async (exchange: Exchange): Promise<Fields> => {
    const raw = await exchange.readBody(ctx.config.maxBodyBytes);
    return Fields.strict(raw.length === 0 ? {} : parseJsonObject(raw), ['model']);
  };
  /** The model to load: {"model"} in the body, or ?model_path= as other MLX servers take it. */
  const modelToLoad = (fields: Fields, exchange: Exchange): string | undefined => {
    const fromBody = fields.string('model');
    const fromQuery = exchange.query.get('model_path') ?? undefined;
    if (fromBody !== undefined && fromQuery !== undefined && fromBody !== fromQuery) throw badRequest(`the body names model '${fromBody}' and the query model_path '${fromQuery}'; give one`, 'model');
    return fromBody ?? fromQuery;
  };
  return [
    readRoute('/admin/health', () => ({ ...health(ctx), worker_status: ctx.engine.workerStatus })),
    readRoute('/admin/status', () => statusBody(ctx)),
    readRoute('/admin/queue', () => {
      const { telemetry, engine } = ctx;
      return { active: telemetry.active, queued: telemetry.queued, max_queue: engine.maxQueue, max_batch: ctx.config.maxBatch, accepting: engine.accepting, rejected_total: telemetry.read('requestsRejected') };
    }),
    readRoute('/admin/metrics', () => {
      const { telemetry } = ctx;
      const memory = sampleMemory(telemetry);
      return {
        requests: { total: telemetry.read('requestsTotal'), active: telemetry.active, queued: telemetry.queued, failed: telemetry.read('requestsFailed'), rejected: telemetry.read('requestsRejected') },
        tokens: { generated: telemetry.read('tokensGenerated'), prompt: telemetry.read('promptTokens') },
        model: { state: telemetry.modelState, loads: telemetry.read('modelLoads'), unloads: telemetry.read('modelUnloads'), load_seconds: telemetry.read('loadSeconds') },
        memory: { rss_gb: gb(memory.rss), active_memory_gb: gb(memory.active), peak_memory_gb: gb(memory.peak) },
        ...ctx.latency.summary(),
        uptime_seconds: uptimeSeconds(telemetry),
      };
    }),
    readRoute('/admin/capabilities', () => {
      const loaded = ctx.engine.loadedModel;
      return {
        model: loaded?.name ?? null,
        model_type: loaded?.modelType ?? null,
        capabilities: { text: true, vision: false, chat: true, streaming: true, embeddings: false },
        apis: ['openai', 'ollama'],
      };
    }),
    {
      method: 'POST',
      path: '/admin/load',
      errors: openAiError,
      handler: async (exchange) => {
        const fields = await optionalBody(exchange);
        const model = ctx.registry.resolve(modelToLoad(fields, exchange));
        const started = performance.now();
        const loaded = await ctx.engine.load(model);
        const seconds = Math.round(performance.now() - started) / 1000;
        const reply: LoadReply = {
          status: 'success',
          model_name: loaded.name,
          memory_gb: gb(loaded.bytes),
          load_time: seconds,
          model: loaded.name,
          model_type: loaded.modelType,
          model_memory_gb: gb(loaded.bytes),
          load_seconds: seconds,
        };
        exchange.json(200, reply);
      },
    },
    {
      method: 'POST',
      path: '/admin/unload',
      errors: openAiError,
      handler: async (exchange) => {
        await optionalBody(exchange);
        const result = await ctx.engine.unload();
        const seconds = Math.round(result.unloadMs) / 1000;
        const reply: UnloadReply = {
          status: 'success',
          model_name: result.name,
          memory_freed_gb: gb(result.freedBytes),
          unload_time: seconds,
          model: result.name,
          model_memory_gb: gb(result.modelBytes),
          unload_seconds: seconds,
        };
        exchange.json(200, reply);
      },
    },
  ];
}
