/**
 * The long soak: steady mixed load (plain, streamed and invalid requests from several clients) in
 * phases, each followed by a quiet spell long enough for the idle unload, so a run of hours
 * crosses many load/unload cycles. It fails when resident memory grows steadily (the fitted
 * line over the run, not one noisy sample), when any request fails unexpectedly, or when an idle
 * unload does not come.
 */
import { SoakClient, sleep, type Generation } from './client.ts';
import { idleTolerance } from './comprehensive.ts';
import { Reporter, finishSuite, formatSeconds, gb, type SuiteResult } from './report.ts';

export interface LongSoakOptions {
  durationSeconds: number;
  clients: number;
  /** Seconds of load between idle spells. */
  loadPhaseSeconds: number;
  idleWaitSeconds: number | null;
  sampleIntervalSeconds: number;
  progressIntervalSeconds: number;
  tokens: number;
  /** Fitted resident-memory growth over the run that counts as a leak. */
  maxGrowthGb: number;
  maxErrorRate: number;
  /** Median per-token latency growth (last fifth vs first fifth) that fails the run; null: report only. */
  maxLatencyDrift: number | null;
}

export const longSoakDefaults = (durationSeconds: number): LongSoakOptions => ({
  durationSeconds,
  clients: 2,
  loadPhaseSeconds: Math.min(600, Math.max(5, durationSeconds / 4)),
  idleWaitSeconds: null,
  sampleIntervalSeconds: Math.min(5, Math.max(0.5, durationSeconds / 100)),
  progressIntervalSeconds: Math.min(60, Math.max(2, durationSeconds / 10)),
  tokens: 24,
  maxGrowthGb: 0.1,
  maxErrorRate: 0,
  maxLatencyDrift: null,
});

export interface MemorySample {
  t: number;
  rssGb: number;
  loaded: boolean;
}

export interface Trend {
  points: number;
  slopeGbPerHour: number | null;
  /** Slope times the time the points span: how much the line rose over the run. */
  fittedGrowthGb: number | null;
}

export interface LongSoakResult extends SuiteResult {
  suite: 'long-soak';
  durationSeconds: number;
  requests: number;
  errors: number;
  errorRate: number;
  errorSamples: string[];
  idleCycles: number;
  missedIdleUnloads: number;
  memory: { loaded: Trend; residual: Trend; samples: MemorySample[]; residuals: MemorySample[] };
  latency: { firstMedianMsPerToken: number | null; lastMedianMsPerToken: number | null; driftPercent: number | null };
}

/** Least-squares line through (t seconds, GB). */
export function trend(samples: MemorySample[]): Trend {
  const n = samples.length;
  if (n < 3) return { points: n, slopeGbPerHour: null, fittedGrowthGb: null };
  const meanT = samples.reduce((s, p) => s + p.t, 0) / n;
  const meanY = samples.reduce((s, p) => s + p.rssGb, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of samples) {
    num += (p.t - meanT) * (p.rssGb - meanY);
    den += (p.t - meanT) ** 2;
  }
  const slope = den === 0 ? 0 : num / den;
  const span = (samples[n - 1] as MemorySample).t - (samples[0] as MemorySample).t;
  return { points: n, slopeGbPerHour: slope * 3600, fittedGrowthGb: slope * span };
}

const median = (values: number[]): number | null => {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
};

type RequestKind = 'plain' | 'stream' | 'invalid';
/** Every tenth request is invalid: errors must stay clean answers under load, for hours. */
const KINDS: RequestKind[] = ['plain', 'stream', 'plain', 'stream', 'plain', 'stream', 'plain', 'stream', 'plain', 'invalid'];

export async function runLongSoak(client: SoakClient, options: LongSoakOptions, report: Reporter): Promise<LongSoakResult> {
  const startedAt = new Date();
  const t0 = performance.now();
  const elapsed = (): number => (performance.now() - t0) / 1000;
  const samples: MemorySample[] = [];
  const residuals: MemorySample[] = [];
  const msPerToken: number[] = [];
  const errorSamples: string[] = [];
  let requests = 0;
  let errors = 0;
  let idleCycles = 0;
  let missedIdleUnloads = 0;
  let lastRss = 0;
  let lastState = 'unknown';

  const recordError = (message: string): void => {
    errors++;
    if (errorSamples.length < 20) errorSamples.push(`${formatSeconds(elapsed())}: ${message}`);
  };
  const sample = async (): Promise<void> => {
    try {
      const s = await client.status();
      lastRss = s.memory.rss_gb;
      lastState = s.model?.state ?? (s.memory.model_loaded ? 'loaded' : 'unloaded');
      samples.push({ t: elapsed(), rssGb: lastRss, loaded: s.memory.model_loaded });
    } catch (error) {
      recordError(`status poll failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  const oneRequest = async (kind: RequestKind, n: number): Promise<void> => {
    requests++;
    if (kind === 'invalid') {
      const g = await client.generate({ prompt: 'invalid', maxTokens: 4, model: 'nonexistent-model' });
      if (g.ok || g.status < 400 || g.status >= 500) recordError(`invalid request answered HTTP ${g.status} (${g.error ?? 'ok'}) instead of a 4xx`);
      return;
    }
    const g: Generation = await client.generate({ prompt: `soak request ${n}`, maxTokens: options.tokens, stream: kind === 'stream', temperature: 0.7, seed: n });
    if (!g.ok) return recordError(`${kind} request failed: ${g.error}`);
    const tokens = g.completionTokens ?? g.chunks;
    if (tokens > 0) msPerToken.push(g.latencyMs / tokens);
  };
  const loadUntil = async (until: number, client_: number): Promise<void> => {
    for (let n = 0; elapsed() < until; n++) await oneRequest(KINDS[(n + client_) % KINDS.length] as RequestKind, n * options.clients + client_);
  };

  report.banner(['MLX Inference Server - Long Soak', `Server: ${client.url}`, `Model: ${client.model ?? '(server default)'}`, `Duration: ${formatSeconds(options.durationSeconds)}, ${options.clients} clients, load phases of ${formatSeconds(options.loadPhaseSeconds)}`, `Started: ${startedAt.toString()}`]);
  const idleTimeout = options.idleWaitSeconds ?? (await client.status()).idle_timeout_seconds;
  const idleSpell = idleTimeout > 0 ? idleTimeout + idleTolerance(idleTimeout) : 0;
  if (idleTimeout <= 0) report.line('[INFO] The server has no idle timeout: no idle unload cycles, only load');

  const sampler = setInterval(() => void sample(), options.sampleIntervalSeconds * 1000);
  const progress = setInterval(() => {
    const recent = median(msPerToken.slice(-50));
    report.line(`[PROGRESS] ${formatSeconds(elapsed())}/${formatSeconds(options.durationSeconds)}  requests ${requests}  errors ${errors}  resident ${gb(lastRss, 3)} (${lastState})  idle cycles ${idleCycles}  median ${recent === null ? '-' : recent.toFixed(1)} ms/token`);
  }, options.progressIntervalSeconds * 1000);
  try {
    while (elapsed() < options.durationSeconds) {
      const phaseEnd = Math.min(options.durationSeconds, elapsed() + options.loadPhaseSeconds);
      await Promise.all(Array.from({ length: options.clients }, (_, c) => loadUntil(phaseEnd, c)));
      if (idleSpell === 0 || elapsed() + idleSpell > options.durationSeconds) continue;
      const quietFrom = elapsed();
      let unloaded = false;
      while (!unloaded && elapsed() - quietFrom < idleSpell) {
        await sleep(500);
        unloaded = !(await client.status()).memory.model_loaded;
      }
      idleCycles++;
      if (!unloaded) {
        missedIdleUnloads++;
        recordError(`no idle unload within ${idleSpell.toFixed(1)}s of quiet`);
        continue;
      }
      residuals.push({ t: elapsed(), rssGb: await client.settledRssGb(), loaded: false });
    }
  } finally {
    clearInterval(sampler);
    clearInterval(progress);
  }

  const loadedTrend = trend(samples.filter((s) => s.loaded));
  const residualTrend = trend(residuals);
  const window = Math.max(5, Math.floor(msPerToken.length / 5));
  const firstMedian = msPerToken.length >= 2 * window ? median(msPerToken.slice(0, window)) : null;
  const lastMedian = msPerToken.length >= 2 * window ? median(msPerToken.slice(-window)) : null;
  const drift = firstMedian !== null && lastMedian !== null ? ((lastMedian - firstMedian) / firstMedian) * 100 : null;
  const errorRate = errors / Math.max(1, requests);

  /** Too few points make no line: said as information, never counted as a pass. */
  const growthCheck = (name: string, t: Trend): void => {
    if (t.fittedGrowthGb === null || t.slopeGbPerHour === null) {
      report.line(`[INFO] ${name}: too few points (${t.points}) to fit a line; run longer for this verdict`);
      return;
    }
    report.test(name);
    report.info(`${t.points} points, slope ${(t.slopeGbPerHour * 1024).toFixed(1)} MB/hour, fitted growth over the run ${gb(t.fittedGrowthGb)}`);
    report.verdict(t.fittedGrowthGb < options.maxGrowthGb, `Fitted growth ${t.fittedGrowthGb < options.maxGrowthGb ? '<' : '≥'} ${options.maxGrowthGb} GB`);
  };
  report.line('');
  growthCheck('Memory Trend (model loaded) - no steady growth under load', loadedTrend);
  growthCheck('Memory Trend (after idle unloads) - no steady growth across cycles', residualTrend);
  report.test('Errors - no unexpected failures');
  report.info(`${requests} requests, ${errors} errors (${(errorRate * 100).toFixed(3)}%)`);
  for (const e of errorSamples) report.info(`  ${e}`);
  report.verdict(requests > 0 && errorRate <= options.maxErrorRate, `Error rate ${(errorRate * 100).toFixed(3)}% over ${requests} requests (limit ${(options.maxErrorRate * 100).toFixed(3)}%)`);
  if (idleCycles === 0) report.line(`[INFO] Idle unloads: no quiet spell fitted in the run (idle timeout ${idleTimeout}s)`);
  else {
    report.test('Idle Unloads - every quiet spell ends in an unload');
    report.info(`${idleCycles} idle spells, ${missedIdleUnloads} without an unload (idle timeout ${idleTimeout}s)`);
    report.verdict(missedIdleUnloads === 0, `${idleCycles - missedIdleUnloads}/${idleCycles} idle unloads happened`);
  }
  const driftText = drift === null ? 'too few requests to compare' : `${(firstMedian as number).toFixed(1)} -> ${(lastMedian as number).toFixed(1)} ms/token (${drift >= 0 ? '+' : ''}${drift.toFixed(1)}%)`;
  if (options.maxLatencyDrift === null || drift === null) report.line(`[INFO] Latency drift (median per-token, last fifth vs first fifth): ${driftText}`);
  else {
    report.test('Latency Drift - median per-token latency, last fifth vs first fifth');
    report.info(driftText);
    report.verdict(drift <= options.maxLatencyDrift * 100, `Drift ${drift.toFixed(1)}% (limit ${(options.maxLatencyDrift * 100).toFixed(0)}%)`);
  }
  return {
    ...finishSuite('long-soak', client, report, startedAt, 'LONG SOAK PASSED'),
    durationSeconds: elapsed(),
    requests,
    errors,
    errorRate,
    errorSamples,
    idleCycles,
    missedIdleUnloads,
    memory: { loaded: loadedTrend, residual: residualTrend, samples, residuals },
    latency: { firstMedianMsPerToken: firstMedian, lastMedianMsPerToken: lastMedian, driftPercent: drift },
  };
}
