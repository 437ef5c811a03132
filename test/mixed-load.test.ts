/**
 * Issue 8's hostile mix, for five minutes (MIXED_LOAD_SECONDS to change it): hundreds of
 * connections sending valid, invalid, aborting and slow requests. Zero crashes, zero lost
 * accepted requests, well-formed errors, flat memory.
 */
import t from 'tap';
import { mixedLoadTable, runMixedLoad } from '../soak/mixed-load.ts';
import { startServer } from './helpers/server.ts';

const seconds = Number(process.env.MIXED_LOAD_SECONDS ?? 300);
t.setTimeout((seconds + 120) * 1000);

t.test(`mixed load for ${seconds}s over 200 connections`, async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const result = await runMixedLoad({ url: server.url, durationMs: seconds * 1000, connections: 200, maxGrowthMb: 64 }, (line) => t.comment(line));
  for (const line of mixedLoadTable(result)) t.comment(line);
  t.comment(`memory ${result.memory.startMb.toFixed(0)} -> ${result.memory.endMb.toFixed(0)} MB, fitted growth after warm-up ${result.memory.fittedGrowthMb.toFixed(1)} MB`);
  t.same(result.failures, [], 'no failures');
  t.equal(result.restarts, 0, 'no crash or restart');
  const accepted = Object.values(result.requests).reduce((sum, r) => sum + r.ok, 0);
  t.ok(accepted > 200, `${accepted} requests answered in full (${accepted - result.requests.invalid.ok} valid, ${result.requests.invalid.ok} invalid ones with a 4xx)`);
  t.equal(server.logs.filter((line) => line.includes('"event":"listening"')).length, 1, 'one server process throughout');
  t.notOk(server.logs.some((line) => line.includes('worker_failed')), 'the worker never failed');
});
