/** Admin routes: health and status are answered from shared memory alone; load and unload drive the engine. */
import type { Exchange } from '../http/exchange.ts';
import { openAiError, parseJsonObject, type Route } from '../http/server.ts';
import type { Telemetry } from '../telemetry/layout.ts';
import type { ServeContext } from './context.ts';
import { Fields } from './fields.ts';

const GB = 1024 ** 3;
const gb = (bytes: number): number => Math.round((bytes / GB) * 10000) / 10000;

/**
 * Samples process memory into telemetry. What a model holds is measured against the pre-load
 * baseline: the lowest resident memory seen before the first load began (the server samples once
 * before it listens), since V8 returns some of start-up's heap only seconds later.
 */
export function sampleMemory(telemetry: Telemetry): { rss: number; active: number; peak: number } {
  const rss = process.memoryUsage.rss();
  telemetry.write('rssBytes', rss);
  let baseline = telemetry.read('baselineRssBytes');
  const beforeFirstLoad = telemetry.read('modelLoads') === 0 && telemetry.modelState === 'unloaded';
  if (beforeFirstLoad && (baseline === 0 || rss < baseline)) {
    baseline = rss;
    telemetry.write('baselineRssBytes', rss);
  }
  const active = telemetry.modelState === 'unloaded' ? 0 : Math.max(0, rss - baseline);
  if (active > telemetry.read('peakRssBytes')) telemetry.write('peakRssBytes', active);
  return { rss, active, peak: telemetry.read('peakRssBytes') };
}

/** The loaded model's KV budget and what running requests hold of it; null when none is loaded. */
function kvCacheBody(ctx: ServeContext): Record<string, number> | null {
  const kv = ctx.engine.kvUsage;
  return kv && { budget_bytes: kv.budgetBytes, reserved_bytes: kv.reservedBytes, bytes_per_token: kv.bytesPerToken, max_running: ctx.config.maxBatch, max_waiting: ctx.config.maxQueue };
}

export function statusBody(ctx: ServeContext): Record<string, unknown> {
  const { telemetry, engine } = ctx;
  const memory = sampleMemory(telemetry);
  const loaded = engine.loadedModel;
  const state = telemetry.modelState;
  const lastActivity = telemetry.read('lastActivityMs');
  return {
    status: 'healthy',
    memory: {
      active_memory_gb: gb(memory.active),
      peak_memory_gb: gb(memory.peak),
      rss_gb: gb(memory.rss),
      baseline_rss_gb: gb(telemetry.read('baselineRssBytes')),
      model_loaded: state === 'loaded',
      model_memory_gb: gb(telemetry.read('modelBytes')),
      source: 'process resident set (MLX reports no memory on a CPU device)',
    },
    requests: {
      total: telemetry.read('requestsTotal'),
      active: telemetry.active,
      queued: telemetry.queued,
      failed: telemetry.read('requestsFailed'),
      rejected: telemetry.read('requestsRejected'),
      uptime_seconds: Math.round((Date.now() - telemetry.read('startedAtMs')) / 1000),
      last_activity: new Date(lastActivity).toISOString(),
      idle_seconds: Math.round((Date.now() - lastActivity) / 1000),
    },
    model: {
      name: loaded?.name ?? null,
      default: ctx.registry.defaultName,
      state,
      type: loaded?.modelType ?? null,
      weights: loaded ? { placement: loaded.placement, policy: ctx.config.weights } : null,
      context_length: loaded?.contextLength ?? null,
      loaded_at: loaded ? loaded.loadedAt.toISOString() : null,
      load_seconds: loaded ? telemetry.read('loadSeconds') : null,
      loads: telemetry.read('modelLoads'),
      unloads: telemetry.read('modelUnloads'),
    },
    tokens: { generated: telemetry.read('tokensGenerated'), prompt: telemetry.read('promptTokens') },
    kv_cache: kvCacheBody(ctx),
    idle_timeout_seconds: engine.idleTimeoutSeconds,
  };
}

export function adminRoutes(ctx: ServeContext): Route[] {
  const optionalBody = async (exchange: Exchange): Promise<Fields> => {
    const raw = await exchange.readBody(ctx.config.maxBodyBytes);
    return Fields.strict(raw.length === 0 ? {} : parseJsonObject(raw), ['model']);
  };
  return [
    {
      method: 'GET',
      path: '/admin/health',
      errors: openAiError,
      quiet: true,
      handler: (exchange) => {
        const { telemetry } = ctx;
        exchange.json(200, {
          status: 'healthy',
          model_state: telemetry.modelState,
          active_requests: telemetry.active,
          queued_requests: telemetry.queued,
          uptime_seconds: Math.round((Date.now() - telemetry.read('startedAtMs')) / 1000),
        });
      },
    },
    { method: 'GET', path: '/admin/status', errors: openAiError, quiet: true, handler: (exchange) => exchange.json(200, statusBody(ctx)) },
    {
      method: 'POST',
      path: '/admin/load',
      errors: openAiError,
      handler: async (exchange) => {
        const fields = await optionalBody(exchange);
        const model = ctx.registry.resolve(fields.string('model'));
        const started = performance.now();
        const loaded = await ctx.engine.load(model);
        exchange.json(200, {
          status: 'loaded',
          model: loaded.name,
          model_type: loaded.modelType,
          model_memory_gb: gb(loaded.bytes),
          load_seconds: Math.round(performance.now() - started) / 1000,
        });
      },
    },
    {
      method: 'POST',
      path: '/admin/unload',
      errors: openAiError,
      handler: async (exchange) => {
        await optionalBody(exchange);
        const result = await ctx.engine.unload();
        exchange.json(200, {
          status: 'unloaded',
          model: result.name,
          memory_freed_gb: gb(result.freedBytes),
          model_memory_gb: gb(result.modelBytes),
          unload_seconds: Math.round(result.unloadMs) / 1000,
        });
      },
    },
  ];
}
