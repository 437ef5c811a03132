/**
 * Fleet mode (soak/ --hosts) against two servers on loopback, run in parallel: one behaves, the
 * other has its idle timeout disabled, so its idle check must fail, its row must say so and the
 * run must exit non-zero. Recovery is lowered to 50% and leak cycles skipped: this test is
 * about the fleet plumbing, not the server's memory.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { FleetResult } from '../soak/fleet.ts';
import { runSoak } from './helpers/soak.ts';
import { startServer, tempDir } from './helpers/server.ts';

t.test('fleet: every host in parallel, one row each, JSON of all, non-zero when one fails', async (t) => {
  const [good, noIdle] = await Promise.all([startServer(['--idle-timeout', '6']), startServer(['--idle-timeout', '0'])]);
  t.teardown(async () => {
    await Promise.all([good.stop(), noIdle.stop()]);
  });
  const dir = tempDir('soak-fleet-');
  const hosts = join(dir, 'hosts.txt');
  writeFileSync(hosts, `# two servers on loopback\n127.0.0.1:${good.port}\nhttp://127.0.0.1:${noIdle.port}  tiny-qwen3\n`);
  const json = join(dir, 'fleet.json');
  const run = await runSoak(['--hosts', hosts, '--json', json, '--min-recovery', '50', '--leak-cycles', '0', '--concurrency', '2', '--extended']);
  t.equal(run.code, 1, 'one host failed');
  const goodLabel = `127.0.0.1:${good.port}`;
  const badLabel = `127.0.0.1:${noIdle.port}`;
  t.match(run.output, new RegExp(`^\\[${goodLabel}\\s*\\] \\[PASS\\] Server is healthy`, 'm'), 'output lines carry their host');
  t.match(run.output, new RegExp(`^\\| ${goodLabel}\\s*\\| default\\s*\\| 12\\s*\\| 0\\s*\\|.*\\| PASS\\s*\\|$`, 'm'), 'the good host passes');
  t.match(run.output, new RegExp(`^\\| ${badLabel}\\s*\\| tiny-qwen3\\s*\\| 11\\s*\\| 1\\s*\\|.*\\| FAIL \\(comprehensive 9\\)\\s*\\|$`, 'm'));
  t.match(run.output, /1 OF 2 HOSTS FAILED/);
  const fleet = JSON.parse(readFileSync(json, 'utf8')) as FleetResult;
  t.same(fleet.hosts.map((h) => [h.url, h.passed]), [
    [`http://${goodLabel}`, true],
    [`http://${badLabel}`, false],
  ]);
  t.equal(fleet.passed, false);
  const runTimes = fleet.hosts.map((h) => [Date.parse(h.results[0]?.startedAt ?? ''), Date.parse(h.results[0]?.finishedAt ?? '')] as const);
  t.ok(runTimes[0] && runTimes[1] && runTimes[0][0] < runTimes[1][1] && runTimes[1][0] < runTimes[0][1], 'the two hosts ran at the same time');
});
