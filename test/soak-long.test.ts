/**
 * A short long-soak run (soak/ --duration) against a real server with a short idle timeout. 60 s
 * with 3 s load phases: on a loaded CI machine one model load has taken 35 s, and the run must
 * still have room for idle unloads and reloads.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { HostResult } from '../soak/fleet.ts';
import type { LongSoakResult } from '../soak/long-soak.ts';
import { runSoak } from './helpers/soak.ts';
import { startServer, tempDir } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '4']);
t.teardown(() => server.stop());
const dir = tempDir('soak-long-');

t.test('long soak: load, idle unloads, trend, JSON summary', async (t) => {
  const json = join(dir, 'long.json');
  const run = await runSoak(['--url', server.url, '--duration', '60s', '--load-phase', '3s', '--json', json]);
  if (!t.equal(run.code, 0, 'exit 0')) t.comment(run.output);
  t.match(run.output, /^\[PROGRESS\] \d+s\/60s {2}requests \d+ {2}errors 0/m);
  t.match(run.output, /\[PASS\] \d+\/\d+ idle unloads happened/);
  const result = (JSON.parse(readFileSync(json, 'utf8')) as HostResult).results[0] as LongSoakResult;
  t.equal(result.suite, 'long-soak');
  t.equal(result.passed, true);
  t.ok(result.requests > 0);
  t.equal(result.errors, 0);
  t.ok(result.idleCycles >= 1, 'at least one idle unload cycle');
  t.equal(result.missedIdleUnloads, 0);
  t.ok(result.memory.samples.length >= 10, 'memory sampled through the run');
  t.ok(result.memory.loaded.points >= 3 && result.memory.loaded.fittedGrowthGb !== null, 'a line was fitted through the loaded samples');
});
