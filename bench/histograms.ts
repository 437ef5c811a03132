/**
 * Every measurement goes into an HDR histogram. Values are stored as integers at 1/1000 of the
 * unit shown: latencies in microseconds (shown in ms), rates in thousandths of a token or
 * request per second, so slow 4-bit decode (~2.6 tok/s) keeps three significant digits too.
 */
import * as hdr from 'hdr-histogram-js';

export type MetricKind = 'latency' | 'rate';
export const STORAGE_SCALE = 1000;

export interface Percentiles {
  min: number;
  p25: number;
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  p99_9: number;
  max: number;
}

/** One histogram as a result file holds it; figures are in the shown unit (ms, tok/s, req/s). */
export interface HistogramRecord {
  key: string;
  model: string;
  scenario: string;
  metric: string;
  kind: MetricKind;
  unit: string;
  better: 'lower' | 'higher';
  count: number;
  mean: number;
  percentiles: Percentiles;
  /** hdr-histogram-js `encodeIntoCompressedBase64`, values at STORAGE_SCALE of the unit. */
  encoded: string;
}

export const METRICS = {
  ttft: { kind: 'latency', unit: 'ms', title: 'time to first token' },
  itl: { kind: 'latency', unit: 'ms', title: 'inter-token latency (gap between streamed chunks)' },
  e2e: { kind: 'latency', unit: 'ms', title: 'end-to-end latency' },
  latency: { kind: 'latency', unit: 'ms', title: 'request latency' },
  gen_tps: { kind: 'rate', unit: 'tok/s', title: 'generated tokens / end-to-end time, per request' },
  prompt_tps: { kind: 'rate', unit: 'tok/s', title: 'prompt tokens / time to first token, per request' },
  aggregate_tps: { kind: 'rate', unit: 'tok/s', title: 'all generated tokens / wall time, per round' },
  requests_per_s: { kind: 'rate', unit: 'req/s', title: 'requests completed per second, per 500 ms window' },
} as const satisfies Record<string, { kind: MetricKind; unit: string; title: string }>;
export type MetricName = keyof typeof METRICS;

const newHistogram = (): hdr.Histogram => hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 2 ** 40, numberOfSignificantValueDigits: 3, autoResize: true });

export const PERCENTILE_POINTS: [keyof Percentiles, number][] = [
  ['p25', 25],
  ['p50', 50],
  ['p75', 75],
  ['p90', 90],
  ['p99', 99],
  ['p99_9', 99.9],
];

export function percentilesOf(histogram: hdr.Histogram): Percentiles {
  const at = (p: number): number => histogram.getValueAtPercentile(p) / STORAGE_SCALE;
  // max through the same quantization as the percentiles (each reports its bucket's highest equivalent value), so p99.9 <= max
  const result = { min: histogram.minNonZeroValue / STORAGE_SCALE, max: at(100) } as Percentiles;
  for (const [name, p] of PERCENTILE_POINTS) result[name] = at(p);
  if (histogram.totalCount === 0) result.min = 0;
  return result;
}

export const decodeHistogram = (encoded: string): hdr.Histogram => hdr.decodeFromCompressedBase64(encoded);

/** Histograms by model, scenario and metric, created on first use. */
export class Recorders {
  private readonly histograms = new Map<string, { model: string; scenario: string; metric: MetricName; histogram: hdr.Histogram }>();

  record(model: string, scenario: string, metric: MetricName, value: number): void {
    if (!Number.isFinite(value) || value < 0) return;
    const key = `${model}/${scenario}/${metric}`;
    let entry = this.histograms.get(key);
    if (!entry) {
      entry = { model, scenario, metric, histogram: newHistogram() };
      this.histograms.set(key, entry);
    }
    entry.histogram.recordValue(Math.max(1, Math.round(value * STORAGE_SCALE)));
  }

  percentile(model: string, scenario: string, metric: MetricName, percentile: number): number | null {
    const entry = this.histograms.get(`${model}/${scenario}/${metric}`);
    return entry && entry.histogram.totalCount > 0 ? entry.histogram.getValueAtPercentile(percentile) / STORAGE_SCALE : null;
  }

  median(model: string, scenario: string, metric: MetricName): number | null {
    return this.percentile(model, scenario, metric, 50);
  }

  toRecords(): HistogramRecord[] {
    return [...this.histograms.entries()].map(([key, { model, scenario, metric, histogram }]) => {
      const spec = METRICS[metric];
      return {
        key,
        model,
        scenario,
        metric,
        kind: spec.kind,
        unit: spec.unit,
        better: spec.kind === 'latency' ? 'lower' : 'higher',
        count: histogram.totalCount,
        mean: histogram.mean / STORAGE_SCALE,
        percentiles: percentilesOf(histogram),
        encoded: hdr.encodeIntoCompressedBase64(histogram),
      };
    });
  }
}
