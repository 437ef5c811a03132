/**
 * The comprehensive soak test (soak/) run as operators run it, against a real server with a short
 * idle timeout, plus the suite's pure helpers. The memory-recovery threshold is lowered to 50%
 * here: this test is about the suite working end to end; the server's recovery is its own topic
 * (95% stays the suite's default).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { ComprehensiveResult } from '../soak/comprehensive.ts';
import { parseHostsFile, type HostResult } from '../soak/fleet.ts';
import { trend } from '../soak/long-soak.ts';
import { parseDuration } from '../soak/report.ts';
import { runSoak, testLines } from './helpers/soak.ts';
import { builtinModelGguf, serverStatus, startServer, tempDir } from './helpers/server.ts';

t.test('durations, host files and the memory trend', async (t) => {
  t.equal(parseDuration('24h'), 86400);
  t.equal(parseDuration('1h30m'), 5400);
  t.equal(parseDuration('90s'), 90);
  t.equal(parseDuration('250ms'), 0.25);
  t.equal(parseDuration('45'), 45);
  t.throws(() => parseDuration('10 minutes'));
  t.same(parseHostsFile('# fleet\nmac-mini-1\n10.0.0.7:8080  mlx-community/Qwen2.5-0.5B-Instruct-4bit\n\nhttps://studio.lan/ # big one\n'), [
    { url: 'http://mac-mini-1:11437', model: undefined },
    { url: 'http://10.0.0.7:8080', model: 'mlx-community/Qwen2.5-0.5B-Instruct-4bit' },
    { url: 'https://studio.lan:11437', model: undefined },
  ]);
  const growing = trend([0, 600, 1200, 1800].map((t) => ({ t, rssGb: 1 + t / 3600, loaded: true })));
  t.equal(growing.slopeGbPerHour?.toFixed(6), '1.000000', '1 GB/hour');
  t.equal(growing.fittedGrowthGb?.toFixed(6), '0.500000', 'over half an hour');
  t.equal(trend([{ t: 0, rssGb: 1, loaded: true }]).fittedGrowthGb, null, 'one point fits no line');
});

t.test('comprehensive test passes against a healthy server, with its eleven checks in order and [TEST]/[PASS] lines', async (t) => {
  const server = await startServer(['--idle-timeout', '6']);
  t.teardown(() => server.stop());
  const json = join(tempDir('soak-'), 'result.json');
  // --extended: on a loaded CI machine the unload may come later than ±2 s; an early or missing unload still fails.
  const run = await runSoak(['--url', server.url, '--min-recovery', '50', '--leak-cycles', '1', '--extended', '--json', json]);
  if (!t.equal(run.code, 0, 'exit 0')) t.comment(run.output);
  const titles = testLines(run.output);
  const seedOrder = ['Health Check', 'Baseline Memory', 'On-Demand Loading', 'Subsequent Queries', 'Concurrent Requests', 'Manual Unload', 'Memory Recovery', 'Reload After Unload', 'Idle Timeout Unload', 'Memory Leak Detection', 'Status API', 'Request Tracking'];
  t.same(titles.map((line) => line.replace(/ - .*/, '')), seedOrder.map((name, i) => `${i + 1}. ${name}`));
  t.equal([...run.output.matchAll(/^\[PASS\]/gm)].length, 12);
  t.notMatch(run.output, /^\[FAIL\]/m);
  t.match(run.output, /Tests Passed: 12\nTests Failed: 0/);
  t.match(run.output, /OK \(same text as alone\)/);
  const result = (JSON.parse(readFileSync(json, 'utf8')) as HostResult).results[0] as ComprehensiveResult;
  t.equal(result.passed, true);
  t.equal(result.measurements.idleTimeoutSeconds, 6);
  t.ok((result.measurements.idleUnloadSeconds ?? 0) >= 4, 'unloaded no earlier than the timeout minus its tolerance');
  t.ok((result.measurements.recoveryPercent ?? 0) >= 50);
  t.ok((result.measurements.leakDeltaGb ?? 1) < 0.1);
});

t.test('the same suite passes against a GGUF model served by llama.cpp', async (t) => {
  const modelsDir = tempDir('soak-gguf-');
  builtinModelGguf(join(modelsDir, 'tiny-qwen3-q8.gguf'), { type: 'Q8_0' });
  const server = await startServer(['--idle-timeout', '6', '--models-dir', modelsDir], { MLX_SERVER_LLAMA_THREADS: '1' });
  t.teardown(() => server.stop());
  const json = join(modelsDir, 'result.json');
  const run = await runSoak(['--url', server.url, '--model', 'tiny-qwen3-q8', '--min-recovery', '50', '--leak-cycles', '1', '--extended', '--json', json]);
  if (!t.equal(run.code, 0, 'exit 0')) t.comment(run.output);
  t.match(run.output, /Tests Passed: 12\nTests Failed: 0/);
  const result = (JSON.parse(readFileSync(json, 'utf8')) as HostResult).results[0] as ComprehensiveResult;
  t.ok((result.measurements.recoveryPercent ?? 0) >= 50, `recovered ${result.measurements.recoveryPercent}% of what loading the GGUF model added`);
  const { model } = await serverStatus(server.url);
  t.same([model.name, model.weights?.dtype], ['tiny-qwen3-q8', 'Q8_0'], 'the suite ran on the GGUF model, through llama.cpp');
});

t.test('an unreachable server fails at the health check', async (t) => {
  const run = await runSoak(['--url', 'http://127.0.0.1:9']);
  t.equal(run.code, 1);
  t.match(run.output, /\[FAIL\] error: fetch failed/);
  t.match(run.output, /Tests Passed: 0\nTests Failed: 1/);
});

t.test('bad flags are a usage error', async (t) => {
  t.equal((await runSoak(['--suite', 'long'])).code, 2, 'the long soak needs --duration');
  t.equal((await runSoak(['--duration', 'forever'])).code, 2);
});
