/**
 * The memory-recovery rule the engines are held to: after an unload, the process's RSS comes back
 * to within RECOVERY_TOLERANCE of the weights' size above the settled pre-load baseline.
 */
import type { Test } from 'tap';
import { serverStatus, sleep } from './server.ts';

/**
 * An unload gives back all but 3% of the weights' size, measured from a baseline taken after a
 * first load and unload: the model's memory is freed, not leaked. Against the start-up baseline
 * the first unload also carries the main thread's own state from its first generations (2-7 MB
 * with the built-in model's 151 MB of weights), paid once and not scaling with the model; 15
 * further cycles read -1.4 to +2.8 MB. A leak of even 4 MB a load crosses this bar.
 */
export const RECOVERY_TOLERANCE = 0.03;

/** The process's resident memory as the server's status reports it, in GiB. */
export const statusRss = async (url: string): Promise<number> => (await serverStatus(url)).memory.rss_gb;

/**
 * What the idle process settles to: the lowest reading once it has not fallen for 10 s. V8 gives
 * back the heap that start-up or serving grew only some seconds after the activity ends, on its
 * own schedule (a clean-clone CI run fell 14 MB over 25 s after start-up), so the pre-load baseline
 * and every after-unload reading wait for the same quiet: measured any sooner, an unload is
 * compared with a baseline that had more time to shrink. A leak stays in every reading, so the
 * lowest still shows it.
 */
export async function settledRss(url: string): Promise<{ rss: number; seconds: number }> {
  const started = Date.now();
  let lowest = await statusRss(url);
  let lowestAt = Date.now();
  while (Date.now() - lowestAt < 10_000 && Date.now() - started < 60_000) {
    await sleep(500);
    const rss = await statusRss(url);
    if (rss < lowest - 0.0005) lowestAt = Date.now();
    lowest = Math.min(lowest, rss);
  }
  return { rss: lowest, seconds: (Date.now() - started) / 1000 };
}

/** Asserts that `rss` (GiB) is within the recovery tolerance of the weights above `baseline` (GiB). */
export function assertRecovered(t: Test, { rss, baseline, weightsBytes }: { rss: number; baseline: number; weightsBytes: number }, what: string): void {
  const residualBytes = (rss - baseline) * 2 ** 30;
  const allowedBytes = RECOVERY_TOLERANCE * weightsBytes;
  const mb = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);
  t.ok(
    residualBytes <= allowedBytes,
    `${what}: ${mb(residualBytes)} MB above the baseline, within ${RECOVERY_TOLERANCE * 100}% of the weights' ${mb(weightsBytes)} MB (${mb(allowedBytes)} MB)`,
  );
}

/**
 * What a load/unload cycle may leave behind, as a share of the weights, measured over many cycles
 * together. Single settled readings of an idle process wander by up to 5 MB (a clean-clone CI run
 * read 5.0, 0.2, 0.5, 0.6, 3.8 MB after five cycles of the built-in model), so cycles are run back
 * to back and read once, where a leak has added up and that wander is a small part of the bar.
 */
export const LEAK_PER_CYCLE = 0.01;

/**
 * Runs `cycles` load/generate/unload cycles back to back, then asserts the settled RSS is within
 * LEAK_PER_CYCLE of the weights per cycle above `baseline` (GiB, settled before the first).
 */
export async function assertNoLeakOverCycles(
  t: Test,
  url: string,
  { cycles, baseline, weightsBytes, cycle }: { cycles: number; baseline: number; weightsBytes: number; cycle: (index: number) => Promise<void> },
): Promise<number> {
  for (let index = 0; index < cycles; index++) await cycle(index);
  const residualBytes = ((await settledRss(url)).rss - baseline) * 2 ** 30;
  const allowedBytes = LEAK_PER_CYCLE * weightsBytes * cycles;
  const mb = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);
  t.ok(
    residualBytes <= allowedBytes,
    `${cycles} cycles left ${mb(residualBytes)} MB above the baseline, within ${LEAK_PER_CYCLE * 100}% of the weights' ${mb(weightsBytes)} MB a cycle (${mb(allowedBytes)} MB)`,
  );
  return residualBytes / 2 ** 30;
}
