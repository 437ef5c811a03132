/**
 * Compares a run with a baseline, figure by figure. A figure is the median of one histogram.
 * Noise is what the runs themselves show: a run's relative spread for a figure is half its
 * interquartile range over its median, and the tolerance is the larger of the two runs'
 * spreads (at least NOISE_FLOOR). A figure regresses when it is worse than the baseline by more
 * than that tolerance; figures with fewer than MIN_SAMPLES samples in either run are shown
 * but not judged, since two or three samples show no spread to trust.
 */
import type { HistogramRecord } from './histograms.ts';
import type { BenchResult } from './result.ts';

export const NOISE_FLOOR = 0.02;
export const MIN_SAMPLES = 3;

export type Verdict = 'better' | 'within noise' | 'REGRESSED' | 'too few samples' | 'only in baseline' | 'only in current';

export interface ComparisonRow {
  key: string;
  unit: string;
  better: 'lower' | 'higher';
  baseline: number | null;
  current: number | null;
  /** current / baseline. */
  ratio: number | null;
  tolerance: number | null;
  verdict: Verdict;
}

export const relativeSpread = (h: HistogramRecord): number => (h.percentiles.p50 > 0 ? (h.percentiles.p75 - h.percentiles.p25) / 2 / h.percentiles.p50 : 0);

export function compareResults(baseline: BenchResult, current: BenchResult): ComparisonRow[] {
  const before = new Map(baseline.histograms.map((h) => [h.key, h]));
  const after = new Map(current.histograms.map((h) => [h.key, h]));
  const keys = [...new Set([...before.keys(), ...after.keys()])].sort();
  return keys.map((key): ComparisonRow => {
    const a = before.get(key);
    const b = after.get(key);
    const shape = (a ?? b) as HistogramRecord;
    const row: ComparisonRow = { key, unit: shape.unit, better: shape.better, baseline: a?.percentiles.p50 ?? null, current: b?.percentiles.p50 ?? null, ratio: null, tolerance: null, verdict: 'within noise' };
    if (!a || !b) return { ...row, verdict: a ? 'only in baseline' : 'only in current' };
    row.ratio = a.percentiles.p50 > 0 ? b.percentiles.p50 / a.percentiles.p50 : null;
    row.tolerance = Math.max(NOISE_FLOOR, relativeSpread(a), relativeSpread(b));
    if (a.count < MIN_SAMPLES || b.count < MIN_SAMPLES) return { ...row, verdict: 'too few samples' };
    if (row.ratio === null) return row;
    const change = shape.better === 'higher' ? row.ratio - 1 : 1 - row.ratio;
    if (change < -row.tolerance) row.verdict = 'REGRESSED';
    else if (change > row.tolerance) row.verdict = 'better';
    return row;
  });
}

const num = (v: number | null, digits = 2): string => (v === null ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(digits));

export function formatComparison(baseline: BenchResult, current: BenchResult, rows: ComparisonRow[]): string {
  const lines = [`baseline: ${baseline.fingerprint.hostname} ${baseline.startedAt} (commit ${baseline.fingerprint.gitCommit?.slice(0, 10) ?? '?'})${baseline.load.busy ? ' [BUSY MACHINE]' : ''}`];
  lines.push(`current:  ${current.fingerprint.hostname} ${current.startedAt} (commit ${current.fingerprint.gitCommit?.slice(0, 10) ?? '?'})${current.load.busy ? ' [BUSY MACHINE]' : ''}`);
  if (baseline.fingerprint.cpuModel !== current.fingerprint.cpuModel || baseline.fingerprint.cores !== current.fingerprint.cores) lines.push('note: the two runs come from different machines');
  const width = Math.max(...rows.map((r) => r.key.length), 6);
  lines.push('', `${'figure (median)'.padEnd(width)}  ${'unit'.padEnd(6)} ${'baseline'.padStart(10)} ${'current'.padStart(10)} ${'ratio'.padStart(7)} ${'noise'.padStart(6)}  verdict`);
  for (const r of rows) {
    const tolerance = r.tolerance === null ? '-' : `±${Math.round(r.tolerance * 100)}%`;
    lines.push(`${r.key.padEnd(width)}  ${r.unit.padEnd(6)} ${num(r.baseline).padStart(10)} ${num(r.current).padStart(10)} ${num(r.ratio, 3).padStart(7)} ${tolerance.padStart(6)}  ${r.verdict}`);
  }
  const regressed = rows.filter((r) => r.verdict === 'REGRESSED').length;
  lines.push('', regressed > 0 ? `${regressed} figure(s) regressed beyond the noise the two runs show` : 'no figure regressed beyond the noise the two runs show');
  return lines.join('\n');
}
