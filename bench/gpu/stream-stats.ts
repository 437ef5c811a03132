/** The workload and figures shared by the HTTP client (streams.ts) and the raw loop (raw-llama.ts). */
import { runWholeRounds, type RequestTiming } from '../client.ts';

export interface LevelFigures {
  streams: number;
  rounds: number;
  requests: number;
  maxTokens: number;
  /** Tokens generated in a round over the round's wall time, one sample per round. */
  aggregateTps: number[];
  /** Time to first token of each request, ms. */
  ttftMs: { median: number; p90: number; min: number; max: number };
  /** Per request: tokens after the first over the time after the first token. */
  decodeTpsPerStream: { median: number };
}

const quantile = (values: number[], q: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
};
const round = (value: number, digits = 1): number => Math.round(value * 10 ** digits) / 10 ** digits;

export function levelFigures(streams: number, maxTokens: number, rounds: RequestTiming[][]): LevelFigures {
  const all = rounds.flat();
  const ttft = all.map((t) => (t.chunkTimes[0] ?? t.endedAt) - t.startedAt);
  const decode = all.map((t) => {
    const first = t.chunkTimes[0] ?? t.startedAt;
    const last = t.chunkTimes.at(-1) ?? t.endedAt;
    return (t.completionTokens - 1) / ((last - first) / 1000);
  });
  const aggregate = rounds.map((timings) => {
    const start = Math.min(...timings.map((t) => t.startedAt));
    const end = Math.max(...timings.map((t) => t.endedAt));
    return round(timings.reduce((sum, t) => sum + t.completionTokens, 0) / ((end - start) / 1000));
  });
  return {
    streams,
    rounds: rounds.length,
    requests: all.length,
    maxTokens,
    aggregateTps: aggregate,
    ttftMs: { median: round(quantile(ttft, 0.5), 2), p90: round(quantile(ttft, 0.9), 2), min: round(Math.min(...ttft), 2), max: round(Math.max(...ttft), 2) },
    decodeTpsPerStream: { median: round(quantile(decode, 0.5)) },
  };
}

/** The workload both sides run: the same prompt words, token counts, stream counts and rounds. */
export const WORKLOAD = { promptWords: 100, maxTokens: 128, levels: [1, 16], rounds: { 1: 5, 16: 3 } as Record<number, number> };

export interface LevelResult {
  streams: number;
  /** The level's figures over the rounds in which every request succeeded; null when none did. */
  figures: LevelFigures | null;
  failedRounds: number;
  /** Each failed round's tokens from the requests that succeeded, over the round's wall time: a lower bound on its aggregate. */
  failedRoundsLowerBoundTps: number[];
}

/**
 * Runs every level's rounds of `one` (a request) after a warm-up round at the largest level: the
 * load, and the GPU's first kernels (Vulkan compiles its pipelines on first use) for the batch
 * sizes the levels reach. Only rounds in which every request succeeded are figures (runWholeRounds
 * runs a failed one again).
 */
export async function runLevels(one: () => Promise<RequestTiming>): Promise<LevelResult[]> {
  await Promise.allSettled(Array.from({ length: Math.max(...WORKLOAD.levels) }, one));
  const levels: LevelResult[] = [];
  for (const streams of WORKLOAD.levels) {
    const rounds: RequestTiming[][] = [];
    const failedRoundsLowerBoundTps: number[] = [];
    await runWholeRounds(WORKLOAD.rounds[streams] ?? 1, async () => {
      const started = performance.now();
      const results = await Promise.allSettled(Array.from({ length: streams }, one));
      const timings = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
      const whole = timings.length === streams;
      if (whole) rounds.push(timings);
      else failedRoundsLowerBoundTps.push(round(timings.reduce((sum, t) => sum + t.completionTokens, 0) / ((performance.now() - started) / 1000)));
      return whole;
    });
    levels.push({ streams, figures: rounds.length > 0 ? levelFigures(streams, WORKLOAD.maxTokens, rounds) : null, failedRounds: failedRoundsLowerBoundTps.length, failedRoundsLowerBoundTps });
  }
  return levels;
}
