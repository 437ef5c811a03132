/**
 * The stress scenarios (soak/ --stress) against a real server with a short idle timeout. Token
 * counts are small so the file fits CI's time on a slow shared machine.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { HostResult } from '../soak/fleet.ts';
import type { StressResult } from '../soak/stress.ts';
import { runSoak, testLines } from './helpers/soak.ts';
import { startServer, tempDir } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '4']);
t.teardown(() => server.stop());
const dir = tempDir('soak-stress-');

t.test('stress suite: the five scenarios and the metrics table', async (t) => {
  const json = join(dir, 'stress.json');
  const run = await runSoak(['--url', server.url, '--stress', '--tokens', '8', '--long-tokens', '48', '--json', json]);
  if (!t.equal(run.code, 0, 'exit 0')) t.comment(run.output);
  t.same(testLines(run.output).map((line) => line.replace(/ - .*/, '')), ['1. Concurrent Requests', '2. Long-Running Generation', '3. Multiple Sessions', '4. Memory Usage Under Load', '5. Error Handling Under Load']);
  t.match(run.output, /\| Test\s+\| Requests \| Success Rate \| Avg Response Time \| Peak Memory \| Result \|/);
  for (const [name, requests] of [['Concurrent', 5], ['Long-running', 1], ['Multi-session', 9], ['Memory', 4], ['Errors', 6]] as const) {
    t.match(run.output, new RegExp(`^\\| ${name}\\s*\\| ${requests}\\s*\\| 100%\\s*\\| \\d+\\.\\d\\ds\\s*\\| \\d+\\.\\d\\dGB\\s*\\| PASS\\s*\\|$`, 'm'), name);
  }
  const result = (JSON.parse(readFileSync(json, 'utf8')) as HostResult).results[0] as StressResult;
  t.equal(result.passed, true);
  t.ok(result.rows.every((r) => r.peakMemoryGb > 0), 'memory was sampled in every scenario');
});
