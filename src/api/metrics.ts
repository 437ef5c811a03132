/**
 * GET /metrics: Prometheus text exposition through prom-client, named like vLLM's and
 * llama.cpp's. Every value is read at scrape time from the shared-memory telemetry or the main
 * thread's latency histograms, so a scrape never messages the worker.
 */
import { Counter, Gauge, Histogram, Registry, type MetricType } from 'prom-client';
import type { Route } from '../http/server.ts';
import { openAiError } from './errors.ts';
import type { FinishReason } from '../../core/protocol.ts';
import type { LatencyHistogram } from '../telemetry/latency.ts';
import { ModelState, type ModelStateName } from '../../core/telemetry.ts';
import { sampleMemory } from '../telemetry/memory.ts';
import type { ServeContext } from './context.ts';

/** vLLM's buckets, widened at the fast end: a small model on a CPU answers in milliseconds. */
const BUCKETS = {
  timeToFirstToken: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640],
  timePerOutputToken: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5],
  requestSeconds: [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920],
};

/** prom-client's typings declare a numeric enum here, but its registry prints this string. */
const HISTOGRAM_TYPE = 'histogram' as unknown as MetricType;

const FINISH_REASONS: readonly FinishReason[] = ['stop', 'length', 'cancelled'];

/** A Prometheus histogram whose buckets are read from an HDR histogram at scrape time. */
class HdrHistogramMetric extends Histogram<'le'> {
  constructor(
    private readonly metricName: string,
    private readonly help: string,
    private readonly source: LatencyHistogram,
    private readonly bounds: number[],
    registry: Registry,
  ) {
    super({ name: metricName, help, buckets: bounds, registers: [registry] });
  }

  override async get(): ReturnType<Histogram<'le'>['get']> {
    const counts = this.source.cumulativeCounts(this.bounds);
    const bucket = `${this.metricName}_bucket`;
    return {
      name: this.metricName,
      help: this.help,
      type: HISTOGRAM_TYPE,
      aggregator: 'sum',
      collect: () => undefined,
      values: [
        ...this.bounds.map((le, i) => ({ metricName: bucket, labels: { le }, value: counts[i] ?? 0 })),
        { metricName: bucket, labels: { le: '+Inf' }, value: this.source.count },
        { metricName: `${this.metricName}_sum`, labels: {}, value: this.source.sum },
        { metricName: `${this.metricName}_count`, labels: {}, value: this.source.count },
      ],
    };
  }

  /** prom-client's registry reads a histogram through this method when it has one, not through get(). */
  getForPromString(): ReturnType<Histogram<'le'>['get']> {
    return this.get();
  }
}

export function createMetricsRegistry(ctx: ServeContext): Registry {
  const { telemetry, latency, engine } = ctx;
  const registry = new Registry();
  const registers = [registry];
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers, collect() { this.set(read()); } });
  };
  const counter = (name: string, help: string, read: () => number): void => {
    new Counter({ name, help, registers, collect() { this.reset(); this.inc(read()); } });
  };

  gauge('mlx:num_requests_running', 'Requests handed to the worker and not finished (at most --max-batch).', () => telemetry.active);
  gauge('mlx:num_requests_waiting', 'Requests waiting in the engine for a running place, KV cache room or a model load (at most --max-queue).', () => telemetry.queued);
  gauge('mlx:kv_cache_budget_bytes', 'Bytes the running requests\' KV caches may hold together (0 when no model is loaded).', () => engine.kvUsage?.budgetBytes ?? 0);
  gauge('mlx:kv_cache_reserved_bytes', 'Bytes of the KV budget the running requests hold.', () => engine.kvUsage?.reservedBytes ?? 0);
  counter('mlx:requests_total', 'Requests admitted to the engine.', () => telemetry.read('requestsTotal'));
  counter('mlx:request_failure_total', 'Admitted requests that ended in an error.', () => telemetry.read('requestsFailed'));
  counter('mlx:request_rejected_total', 'Requests refused because --max-queue requests were already waiting.', () => telemetry.read('requestsRejected'));
  new Counter({
    name: 'mlx:request_success_total',
    help: 'Requests that finished generating, by finish reason.',
    labelNames: ['finished_reason'],
    registers,
    collect() {
      this.reset();
      for (const reason of FINISH_REASONS) this.inc({ finished_reason: reason }, latency.finished.get(reason) ?? 0);
    },
  });
  counter('mlx:prompt_tokens_total', 'Prompt tokens prefilled.', () => telemetry.read('promptTokens'));
  counter('mlx:generation_tokens_total', 'Tokens generated.', () => telemetry.read('tokensGenerated'));
  counter('mlx:forward_passes_total', 'Forward passes the worker ran (one per scheduler step).', () => telemetry.read('forwardPasses'));
  counter('mlx:forward_pass_sequences_total', 'Sequences carried by those passes, summed: decoding rows plus prompt chunks.', () => telemetry.read('forwardRows'));
  counter('mlx:forward_pass_prompt_tokens_total', 'Prompt tokens carried by those passes.', () => telemetry.read('forwardPrefillTokens'));
  counter('mlx:llama_pooled_graphs_total', "llama.cpp graphs computed on the kept CPU thread pool (0: the GGUF engine idle, on one thread, or without dist/ggml-threadpool.node).", () => telemetry.read('pooledGraphs'));
  counter('mlx:worker_tokenize_seconds_total', 'Time the model worker spent tokenizing prompts (MLX models are tokenized on their own thread: 0).', () => telemetry.read('workerTokenizeSeconds'));

  new HdrHistogramMetric('mlx:time_to_first_token_seconds', 'Time from arrival to the first streamed token.', latency.timeToFirstToken, BUCKETS.timeToFirstToken, registry);
  new HdrHistogramMetric('mlx:time_per_output_token_seconds', 'Time between streamed tokens, per token.', latency.timePerOutputToken, BUCKETS.timePerOutputToken, registry);
  new HdrHistogramMetric('mlx:e2e_request_latency_seconds', 'Time from arrival to the last token of a finished request.', latency.endToEnd, BUCKETS.requestSeconds, registry);
  new HdrHistogramMetric('mlx:request_queue_time_seconds', 'Time from arrival until the request is handed to the worker: waiting for a running place, KV cache room or a model load.', latency.queueTime, BUCKETS.requestSeconds, registry);

  new Gauge({
    name: 'mlx:model_state',
    help: 'The model lifecycle state: 1 for the current state, 0 for the others.',
    labelNames: ['state'],
    registers,
    collect() {
      const current = telemetry.modelState;
      for (const state of Object.keys(ModelState) as ModelStateName[]) this.set({ state }, state === current ? 1 : 0);
    },
  });
  new Gauge({
    name: 'mlx:model_info',
    help: 'The loaded model (absent when none is loaded).',
    labelNames: ['model', 'model_type'],
    registers,
    collect() {
      this.reset();
      const loaded = engine.loadedModel;
      if (loaded) this.set({ model: loaded.name, model_type: loaded.modelType }, 1);
    },
  });
  gauge('mlx:model_bytes', 'Bytes of the loaded model\'s weights.', () => telemetry.read('modelBytes'));
  gauge('mlx:model_load_seconds', 'How long the last model load took.', () => telemetry.read('loadSeconds'));
  counter('mlx:model_loads_total', 'Model loads.', () => telemetry.read('modelLoads'));
  counter('mlx:model_unloads_total', 'Model unloads.', () => telemetry.read('modelUnloads'));
  gauge('mlx:resident_memory_bytes', 'Resident set size of the server process.', () => sampleMemory(telemetry).rss);
  gauge('mlx:model_resident_memory_bytes', 'Resident memory above the pre-load baseline (MLX reports none on a CPU device).', () => sampleMemory(telemetry).active);
  gauge('mlx:model_resident_memory_peak_bytes', 'Highest resident memory above the pre-load baseline.', () => telemetry.read('peakRssBytes'));
  gauge('process_start_time_seconds', 'Start time of the process since the Unix epoch, in seconds.', () => telemetry.read('startedAtMs') / 1000);
  return registry;
}

export function metricsRoutes(ctx: ServeContext): Route[] {
  const registry = createMetricsRegistry(ctx);
  return [
    {
      method: 'GET',
      path: '/metrics',
      errors: openAiError,
      quiet: true,
      handler: async (exchange) => {
        const text = await registry.metrics();
        exchange.send(200, text, registry.contentType);
      },
    },
  ];
}
