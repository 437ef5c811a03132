/**
 * A hostile mix for one minute (MIXED_LOAD_SECONDS to change it; `npm run soak:mixed` runs five): 200 connections sending
 * valid, invalid, aborting and slow requests, plus one client that stops reading. The server
 * must not crash, must answer every valid request in full (200 connections never fill the
 * 256-deep queue, so no 503 is expected), must answer every invalid one with a well-formed 4xx,
 * must drop the stalled client's stream once it holds more than --max-stream-buffer, and must
 * keep its memory flat.
 */
import t from 'tap';
import { mixedLoadTable, runMixedLoad, VALID_KINDS } from '../soak/mixed-load.ts';
import { startServer } from './helpers/server.ts';

const seconds = Number(process.env.MIXED_LOAD_SECONDS ?? 60);
const CONNECTIONS = 200;
const MAX_QUEUE = 256;
/**
 * Fitted RSS growth after the first fifth of the run. A minute is short: with no leak, quiet
 * 2-core machines read 70-146 MB as the server's heaps and pools settle (a 64 MB bar failed
 * clean-clone runs). A leak of 320 KB a request (~850 valid requests a minute) read 634 MB; one of
 * 64 KB read 102 MB and passes: small per-request leaks are the fuzz test's, with its tight bar.
 */
const MAX_GROWTH_MB = 192;
t.setTimeout((seconds + 240) * 1000);

t.test(`mixed load for ${seconds}s over ${CONNECTIONS} connections`, async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--max-queue', String(MAX_QUEUE), '--max-stream-buffer', '1024']);
  t.teardown(() => server.stop());
  const result = await runMixedLoad({ url: server.url, durationMs: seconds * 1000, connections: CONNECTIONS, maxGrowthMb: MAX_GROWTH_MB, maxQueue: MAX_QUEUE }, (line) => t.comment(line));
  for (const line of mixedLoadTable(result)) t.comment(line);
  t.comment(`memory ${result.memory.startMb.toFixed(0)} -> ${result.memory.endMb.toFixed(0)} MB, fitted growth after warm-up ${result.memory.fittedGrowthMb.toFixed(1)} MB`);
  t.same(result.failures, [], 'no failures: nothing lost, no unexpected answer (a 503 included), no restart, flat memory');
  t.equal(result.restarts, 0, 'no crash or restart');
  for (const kind of VALID_KINDS) t.ok(result.requests[kind].ok > 0, `${result.requests[kind].ok} ${kind} requests answered in full`);
  t.comment(`${VALID_KINDS.reduce((sum, kind) => sum + result.requests[kind].ok, 0)} valid requests answered in full`);
  t.ok(result.requests.invalid.ok > 0, `${result.requests.invalid.ok} invalid requests answered with a well-formed 4xx`);
  t.ok(result.requests.stall.dropped > 0, `${result.requests.stall.dropped} stalled streams dropped, ${result.requests.stall.ok} held whole`);
  t.ok(server.logs.some((line) => line.includes('"dropped":"stream_backpressure"')), 'the server logs the drop as backpressure');
  t.equal(server.logs.filter((line) => line.includes('"event":"listening"')).length, 1, 'one server process throughout');
  t.notOk(server.logs.some((line) => line.includes('worker_failed')), 'the worker never failed');
});
