/**
 * The comprehensive soak test: eleven checks of a model's life on one server (health, baseline
 * memory, on-demand loading, reuse, concurrency, unload, memory recovery, reload, idle unload,
 * leaks, status fields) in that order, printed as [TEST]/[PASS]/[FAIL]/[INFO] lines, plus request
 * tracking. Concurrent answers are compared, not only counted: concurrent greedy outputs must
 * equal the same requests run one at a time.
 */
import type { ServerStatus } from '../src/client/api-client.ts';
import { SoakClient, sleep, type Generation } from './client.ts';
import { Reporter, clock, finishSuite, gb, type SuiteResult } from './report.ts';

export interface ComprehensiveOptions {
  /** Seconds the idle check expects; default: the server's idle_timeout_seconds. */
  idleWaitSeconds: number | null;
  /** Keep waiting up to 390/180 of the timeout, for servers whose idle check runs late. */
  extended: boolean;
  minRecoveryPercent: number;
  maxLeakGb: number;
  concurrency: number;
  /** Extra load/generate/unload cycles before the leak check, so a per-cycle leak adds up. */
  leakCycles: number;
  /** Unload a model found loaded at the start instead of failing the baseline check. */
  unloadFirst: boolean;
}

export const COMPREHENSIVE_DEFAULTS: ComprehensiveOptions = {
  idleWaitSeconds: null,
  extended: false,
  minRecoveryPercent: 95,
  maxLeakGb: 0.1,
  concurrency: 3,
  leakCycles: 3,
  unloadFirst: false,
};

export interface ComprehensiveMeasurements {
  baselineRssGb: number | null;
  loadedDeltaGb: number | null;
  recoveryPercent: number | null;
  leakDeltaGb: number | null;
  idleTimeoutSeconds: number | null;
  idleUnloadSeconds: number | null;
  firstRequestSeconds: number | null;
}

export interface ComprehensiveResult extends SuiteResult {
  suite: 'comprehensive';
  measurements: ComprehensiveMeasurements;
}

const TOKENS = 12;
/** +/-30 s on the default 180 s timeout, scaled with the timeout. */
export const idleTolerance = (timeoutSeconds: number): number => Math.max(2, (timeoutSeconds * 30) / 180);
const show = (text: string): string => JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}...` : text);
const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));

export async function runComprehensive(client: SoakClient, options: ComprehensiveOptions, report: Reporter): Promise<ComprehensiveResult> {
  const startedAt = new Date();
  const m: ComprehensiveMeasurements = { baselineRssGb: null, loadedDeltaGb: null, recoveryPercent: null, leakDeltaGb: null, idleTimeoutSeconds: null, idleUnloadSeconds: null, firstRequestSeconds: null };
  const complete = (prompt: string, maxTokens = TOKENS): Promise<Generation> => client.generate({ prompt, maxTokens, api: 'openai', temperature: 0, seed: 42 });
  const mustComplete = async (prompt: string, maxTokens = TOKENS): Promise<Generation> => {
    const g = await complete(prompt, maxTokens);
    if (!g.ok) throw new Error(`request '${prompt}' failed: ${g.error}`);
    if (g.text.length === 0) throw new Error(`request '${prompt}' returned empty text`);
    return g;
  };
  const loads = (s: ServerStatus): number | undefined => s.model?.loads;
  /** Runs one check; an exception (server gone, bad JSON) fails it instead of ending the run. */
  const check = async (name: string, body: () => Promise<boolean>): Promise<boolean> => {
    report.test(name);
    try {
      return await body();
    } catch (error) {
      return report.fail(`error: ${errorText(error)}`);
    }
  };

  report.banner([
    'MLX Inference Server - Comprehensive Soak Test',
    `Server: ${client.url}`,
    `Test Model: ${client.model ?? '(server default)'}`,
    `Started: ${startedAt.toString()}`,
  ]);

  const healthy = await check('Health Check - Verify server is running', async () => {
    const health = await client.health();
    return health.status === 'healthy' ? report.pass('Server is healthy') : report.fail(`health status is '${health.status}'`);
  });
  if (!healthy) return finish();

  let baseRss = 0;
  await check('Baseline Memory - Verify no model loaded', async () => {
    let s = await client.status();
    let note = '';
    if (s.memory.model_loaded && options.unloadFirst) {
      report.info('A model was loaded; unloading it first (--unload-first)');
      await client.unload();
      s = await client.status();
      note = ' (after --unload-first)';
    }
    baseRss = s.memory.rss_gb;
    m.baselineRssGb = baseRss;
    report.info(`Baseline memory: ${gb(s.memory.active_memory_gb)} (process resident: ${gb(s.memory.rss_gb)})`);
    if (s.memory.model_loaded) return report.fail('A model is loaded at baseline: run on an idle server, or pass --unload-first');
    return report.pass(`No model loaded at baseline (expected)${note}`);
  });

  await check('On-Demand Loading - First request triggers model load', async () => {
    const before = await client.status();
    report.info('Sending first completion request...');
    const g = await complete('MLX Test 1');
    if (!g.ok) return report.fail(`first request failed: ${g.error}`);
    m.firstRequestSeconds = g.latencyMs / 1000;
    const after = await client.status();
    m.loadedDeltaGb = after.memory.rss_gb - baseRss;
    const loadedOnce = loads(before) === undefined || loads(after) === (loads(before) as number) + 1;
    report.info(`Response: ${show(g.text)} (${(g.latencyMs / 1000).toFixed(2)}s including the load)`);
    report.info(`Memory after load: ${gb(after.memory.active_memory_gb, 2)} (delta: ${gb(m.loadedDeltaGb, 2)})`);
    if (!after.memory.model_loaded) return report.fail('The request was answered but the status shows no model loaded');
    if (!loadedOnce) return report.fail(`expected exactly one load, loads went ${loads(before)} -> ${loads(after)}`);
    if (g.text.length === 0) return report.fail('The first completion is empty');
    return report.pass('Model loaded on-demand and generated completion');
  });

  await check('Subsequent Queries - Model stays loaded for follow-up requests', async () => {
    const before = await client.status();
    for (let i = 1; i <= 3; i++) {
      report.info(`Query ${i}/3...`);
      report.info(`  Response: ${show((await mustComplete(`Query ${i}`)).text)}`);
    }
    const after = await client.status();
    if (!after.memory.model_loaded) return report.fail('The model is no longer loaded');
    if (loads(after) !== loads(before)) return report.fail(`The model was reloaded between queries (loads ${loads(before)} -> ${loads(after)})`);
    return report.pass('Multiple queries completed successfully');
  });

  await check('Concurrent Requests - Thread-safe inference lock', async () => {
    const prompts = Array.from({ length: options.concurrency }, (_, i) => `Concurrent request ${i + 1}`);
    report.info(`Running the ${prompts.length} prompts one at a time first (greedy, so each output is fixed)...`);
    const alone: string[] = [];
    for (const prompt of prompts) alone.push((await mustComplete(prompt, 24)).text);
    const failedBefore = (await client.status()).requests.failed;
    report.info(`Sending ${prompts.length} concurrent requests...`);
    const together = await Promise.all(prompts.map((p) => complete(p, 24)));
    let allGood = true;
    together.forEach((g, i) => {
      const same = g.ok && g.text === alone[i];
      if (!same) allGood = false;
      const verdict = same ? 'OK (same text as alone)' : !g.ok ? `FAILED (${g.error})` : `DIFFERENT from alone: ${show(g.text)} vs ${show(alone[i] ?? '')}`;
      report.info(`  Concurrent request ${i + 1}: ${verdict}`);
    });
    const failedAfter = (await client.status()).requests.failed;
    if (failedBefore !== undefined && failedAfter !== failedBefore) return report.fail(`The server counted ${(failedAfter ?? 0) - failedBefore} failed request(s)`);
    if (!allGood) return report.fail('Concurrent requests failed or differ from the same requests run alone');
    return report.pass('All concurrent requests handled successfully (thread-safe, identical to sequential)');
  });

  let loadedRss = 0;
  await check('Manual Unload - Admin API unload command', async () => {
    loadedRss = (await client.status()).memory.rss_gb;
    report.info('Sending manual unload command...');
    const r = await client.unload();
    if (r.status !== 200) return report.fail(`POST /admin/unload answered HTTP ${r.status}: ${JSON.stringify(r.body)}`);
    const s = await client.status();
    if (s.memory.model_loaded) return report.fail('The status still shows a model loaded right after the unload');
    const freed = r.body.memory_freed_gb;
    report.info(`Memory freed: ${typeof freed === 'number' ? gb(freed, 2) : gb(loadedRss - s.memory.rss_gb, 2)}`);
    return report.pass('Manual unload successful');
  });

  await check('Memory Recovery - Verify memory returned to baseline', async () => {
    const after = await client.settledRssGb();
    const loadedDelta = loadedRss - baseRss;
    const residual = after - baseRss;
    report.info(`Baseline: ${gb(baseRss)} (process resident)`);
    report.info(`Loaded: ${gb(loadedRss)} (+${gb(loadedDelta)})`);
    report.info(`After unload: ${gb(after)}`);
    report.info(`Delta: ${gb(residual)}`);
    if (loadedDelta <= 0) return report.fail('Loading the model raised no measurable memory: cannot compute a recovery');
    const recovery = ((loadedRss - after) / loadedDelta) * 100;
    m.recoveryPercent = recovery;
    report.info(`Recovery: ${recovery.toFixed(2)}%`);
    return report.verdict(recovery >= options.minRecoveryPercent, `Memory recovery ${recovery >= options.minRecoveryPercent ? '≥' : '<'}${options.minRecoveryPercent}% (${recovery.toFixed(2)}%)`);
  });

  let idleFrom = performance.now();
  await check('Reload After Unload - Load → Unload → Load cycle', async () => {
    const before = await client.status();
    report.info('Reloading model with new request...');
    const g = await mustComplete('RELOADED');
    idleFrom = performance.now();
    const after = await client.status();
    if (!after.memory.model_loaded) return report.fail('No model loaded after the reload request');
    if (loads(before) !== undefined && loads(after) !== (loads(before) as number) + 1) return report.fail(`expected one more load, loads went ${loads(before)} -> ${loads(after)}`);
    report.info(`Response: ${show(g.text)}`);
    return report.pass('Model reloaded successfully after manual unload');
  });

  await check('Idle Timeout Unload - Auto-unload after the idle timeout', async () => {
    const timeout = options.idleWaitSeconds ?? (await client.status()).idle_timeout_seconds;
    m.idleTimeoutSeconds = timeout;
    if (!(timeout > 0)) return report.fail('The server has no idle timeout (idle_timeout_seconds is 0): nothing to wait for');
    const tolerance = idleTolerance(timeout);
    const deadline = options.extended ? Math.max(timeout + tolerance, (timeout * 390) / 180) : timeout + tolerance;
    const progressEvery = Math.max(1, timeout / 6);
    // Polling often keeps the measured time close to the unload and is itself the test that polls are not activity.
    const pollMs = Math.min(1000, Math.max(200, timeout * 50));
    report.info(`Waiting for idle timeout (${timeout}s, tolerance ±${tolerance.toFixed(1)}s, giving up after ${deadline.toFixed(0)}s)...`);
    report.info(`Current time: ${clock()}; polling health and status every ${pollMs} ms, which must not count as activity`);
    let polls = 0;
    let lastIdleSeconds = -1;
    let timerReset: string | null = null;
    let nextProgress = progressEvery;
    for (;;) {
      const elapsed = (performance.now() - idleFrom) / 1000;
      if (elapsed > deadline) return report.fail(`Model still loaded ${elapsed.toFixed(1)}s after the last request (timeout ${timeout}s)`);
      await client.health();
      const s = await client.status();
      polls += 2;
      const idleSeconds = s.requests.idle_seconds;
      if (idleSeconds !== undefined) {
        // The server rounds to whole seconds; a drop of more than one means polling reset the timer.
        if (idleSeconds < lastIdleSeconds - 1) timerReset = `idle_seconds fell from ${lastIdleSeconds} to ${idleSeconds}`;
        lastIdleSeconds = Math.max(lastIdleSeconds, idleSeconds);
      }
      if (!s.memory.model_loaded) {
        m.idleUnloadSeconds = elapsed;
        report.info(`Unloaded ${elapsed.toFixed(1)}s after the last request; ${polls} health/status polls meanwhile`);
        if (timerReset) return report.fail(`Polling reset the idle timer: ${timerReset}`);
        if (elapsed < timeout - tolerance) return report.fail(`Unloaded too early: ${elapsed.toFixed(1)}s < ${timeout}s - ${tolerance.toFixed(1)}s`);
        const late = elapsed > timeout + tolerance ? ` (late: beyond ±${tolerance.toFixed(1)}s, accepted by --extended)` : '';
        return report.pass(`Idle timeout unload triggered after ${elapsed.toFixed(0)}s (expected ~${timeout}s)${late}`);
      }
      if (elapsed >= nextProgress) {
        report.info(`  ${Math.floor(elapsed)}s elapsed - model still loaded (checking again...)`);
        while (nextProgress <= elapsed) nextProgress += progressEvery;
      }
      await sleep(pollMs);
    }
  });

  await check('Memory Leak Detection - Final baseline check', async () => {
    if ((await client.status()).memory.model_loaded) await client.unload();
    for (let cycle = 1; cycle <= options.leakCycles; cycle++) {
      await mustComplete(`leak cycle ${cycle}`, 32);
      const r = await client.unload();
      if (r.status !== 200) return report.fail(`unload in cycle ${cycle} answered HTTP ${r.status}`);
      report.info(`Load/unload cycle ${cycle}/${options.leakCycles}: resident after unload ${gb(await client.settledRssGb())}`);
    }
    const final = await client.settledRssGb();
    const delta = final - baseRss;
    m.leakDeltaGb = delta;
    report.info(`Initial baseline: ${gb(baseRss)}`);
    report.info(`Final memory: ${gb(final)}`);
    report.info(`Total delta: ${gb(delta)}`);
    return delta < options.maxLeakGb ? report.pass(`No memory leaks detected (delta <${options.maxLeakGb} GB)`) : report.fail(`Memory grew by ${gb(delta)} (limit ${options.maxLeakGb} GB)`);
  });

  await check('Status API - Verify all fields present', async () => {
    const s = (await client.status()) as unknown as Record<string, Record<string, unknown> | undefined>;
    const required: [string, string[]][] = [
      ['status', []],
      ['memory', ['active_memory_gb', 'model_loaded']],
      ['requests', ['total', 'active', 'uptime_seconds', 'last_activity']],
      ['idle_timeout_seconds', []],
    ];
    const missing: string[] = [];
    for (const [field, inner] of required) {
      const value = s[field];
      report.info(`  Field '${field}': ${value === undefined ? 'MISSING' : 'present'}`);
      if (value === undefined) missing.push(field);
      for (const sub of inner) if (value === undefined || !(sub in value)) missing.push(`${field}.${sub}`);
    }
    return missing.length === 0 ? report.pass('All required status fields present') : report.fail(`Missing status fields: ${missing.join(', ')}`);
  });

  await check('Request Tracking - active_requests rises during a request and returns to 0', async () => {
    const totalBefore = (await client.status()).requests.total;
    let activeDuring = -1;
    let sampled: Promise<void> = Promise.resolve();
    const g = await client.generate({
      prompt: 'track me',
      maxTokens: 64,
      stream: true,
      api: 'openai',
      onFirstText: () => {
        sampled = client.health().then((h) => {
          activeDuring = h.active_requests;
        });
      },
    });
    await sampled;
    if (!g.ok) return report.fail(`streaming request failed: ${g.error}`);
    report.info(`active_requests while streaming: ${activeDuring} (${g.chunks} chunks)`);
    let after = await client.health();
    for (let i = 0; i < 50 && (after.active_requests !== 0 || after.queued_requests !== 0); i++) {
      await sleep(100);
      after = await client.health();
    }
    const totalAfter = (await client.status()).requests.total;
    report.info(`active_requests after: ${after.active_requests}, queued: ${after.queued_requests}; requests.total ${totalBefore} -> ${totalAfter}`);
    if (activeDuring < 1) return report.fail('active_requests did not count the running request');
    if (after.active_requests !== 0 || after.queued_requests !== 0) return report.fail('active/queued did not return to 0 after the request ended');
    if (totalAfter <= totalBefore) return report.fail('requests.total did not count the request');
    return report.pass('Request lifecycle tracked (active rose to ≥1, back to 0 afterwards)');
  });

  return finish();

  function finish(): ComprehensiveResult {
    return { ...finishSuite('comprehensive', client, report, startedAt, 'ALL TESTS PASSED - PRODUCTION VERIFIED'), measurements: m };
  }
}
