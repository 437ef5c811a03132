import type { Telemetry } from '../../core/telemetry.ts';

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
