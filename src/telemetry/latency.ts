/**
 * Request latency histograms, recorded on the main thread from the engine's stream events
 * (the worker is never asked). HDR histograms keep every sample within 0.1%, so the same data
 * gives the status page its percentiles and /metrics its cumulative Prometheus buckets.
 */
import { Int32Histogram } from 'hdr-histogram-js';
import type { EngineEvent } from '../engine/engine.ts';
import type { FinishReason, GenerationStats } from '../../core/protocol.ts';

/** Samples are stored in microseconds: HDR histograms hold integers. */
const MICROS_PER_SECOND = 1e6;
const LONGEST_TRACKED_SECONDS = 3600;

export interface Percentiles {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export class LatencyHistogram {
  private readonly histogram = new Int32Histogram(1, LONGEST_TRACKED_SECONDS * MICROS_PER_SECOND, 3);
  private sumSeconds = 0;

  constructor() {
    this.histogram.autoResize = true;
  }

  record(seconds: number, count = 1): void {
    if (!(seconds >= 0) || count <= 0) return;
    this.histogram.recordValueWithCount(Math.max(1, Math.round(seconds * MICROS_PER_SECOND)), count);
    this.sumSeconds += seconds * count;
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  get sum(): number {
    return this.sumSeconds;
  }

  /** Seconds; all zero before the first sample. */
  percentiles(): Percentiles {
    const h = this.histogram;
    const at = (p: number): number => (h.totalCount === 0 ? 0 : h.getValueAtPercentile(p) / MICROS_PER_SECOND);
    return { count: h.totalCount, p50: at(50), p90: at(90), p99: at(99), max: h.totalCount === 0 ? 0 : h.maxValue / MICROS_PER_SECOND };
  }

  /** How many samples are at or below each bound (seconds, ascending): Prometheus's `le` buckets. */
  cumulativeCounts(bounds: readonly number[]): number[] {
    const counts = bounds.map(() => 0);
    const iterator = this.histogram.recordedValuesIterator;
    iterator.reset();
    let first = 0;
    while (iterator.hasNext()) {
      const step = iterator.next();
      const seconds = step.valueIteratedTo / MICROS_PER_SECOND;
      while (first < bounds.length && seconds > (bounds[first] as number)) first++;
      for (let i = first; i < bounds.length; i++) counts[i] = (counts[i] as number) + step.countAtValueIteratedTo;
    }
    return counts;
  }
}

/** The four latencies vLLM and llama.cpp export, plus finished requests by reason. */
export class LatencyRecorder {
  /** Arrival to the first streamed text. */
  readonly timeToFirstToken = new LatencyHistogram();
  /** Gap between streamed tokens, one sample per token. */
  readonly timePerOutputToken = new LatencyHistogram();
  /** Arrival to the last token. */
  readonly endToEnd = new LatencyHistogram();
  /** Arrival until the engine hands the request to the worker: waiting for a running place, KV room or a model load. */
  readonly queueTime = new LatencyHistogram();
  readonly finished = new Map<FinishReason, number>();

  /** Starts timing one request at its arrival; feed it the request's events, then its final stats. */
  track(): RequestTiming {
    return new RequestTiming(this);
  }

  /** Percentiles of each latency and finished requests by reason, as the status page and /admin/metrics show them. */
  summary(): { latency_seconds: Record<string, Percentiles>; finished: Record<string, number> } {
    return {
      latency_seconds: {
        time_to_first_token: this.timeToFirstToken.percentiles(),
        time_per_output_token: this.timePerOutputToken.percentiles(),
        e2e_request: this.endToEnd.percentiles(),
        queue: this.queueTime.percentiles(),
      },
      finished: Object.fromEntries(this.finished),
    };
  }
}

export class RequestTiming {
  private readonly arrivedAt = performance.now();
  private lastTokenAt = 0;
  private tokensSeen = 0;

  constructor(private readonly recorder: LatencyRecorder) {}

  event(event: EngineEvent): void {
    const now = performance.now();
    const { recorder } = this;
    if (event.type === 'admitted') recorder.queueTime.record((now - this.arrivedAt) / 1000);
    if (event.type !== 'text') return;
    if (this.tokensSeen === 0) recorder.timeToFirstToken.record((now - this.arrivedAt) / 1000);
    else {
      const newTokens = event.tokens - this.tokensSeen;
      if (newTokens > 0) recorder.timePerOutputToken.record((now - this.lastTokenAt) / 1000 / newTokens, newTokens);
    }
    this.tokensSeen = event.tokens;
    this.lastTokenAt = now;
  }

  finished(stats: GenerationStats): void {
    const { recorder } = this;
    recorder.finished.set(stats.finishReason, (recorder.finished.get(stats.finishReason) ?? 0) + 1);
    if (stats.finishReason !== 'cancelled') recorder.endToEnd.record((performance.now() - this.arrivedAt) / 1000);
  }
}
