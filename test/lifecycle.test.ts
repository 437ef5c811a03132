/**
 * The model's life in one server process, in the order an operator sees it: nothing loaded at
 * start-up, loading on the first request, reuse, concurrent requests, unloading by request and
 * after the idle timeout, memory given back after each unload, and the status fields that report
 * all of it. Runs a real server on the built-in model with a short idle timeout.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { ServerStatus } from '../src/api/admin.ts';
import { assertNoLeakOverCycles, settledRss } from './helpers/memory.ts';
import { json, post, sleep, serverStatus, startServer, TEST_CACHE_DIR } from './helpers/server.ts';

const IDLE_SECONDS = 3;
/**
 * The first unload is held to the seed's pass criterion (95%; its typical figure is 97.5%), not
 * to the weights-based rule of helpers/memory.ts: measured from the start-up baseline, it also
 * carries what the first load and its first generations set up once in the main thread (2-11 MB
 * across clean-clone runs: 97.3% on one). A leak is step 10's to catch, where cycles add it up.
 */
const SEED_RECOVERY_TARGET = 0.95;
const server = await startServer(['--idle-timeout', String(IDLE_SECONDS)]);
t.teardown(() => server.stop());
const { url } = server;

const status = (): Promise<ServerStatus> => serverStatus(url);
const complete = (prompt: string, extra: Record<string, unknown> = {}) =>
  post(`${url}/v1/completions`, { prompt, max_tokens: 12, temperature: 0, ignore_eos: true, ...extra });

let baseline = 0;
let loadedDelta = 0;
let weightsBytes = 0;

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1 };

/** Bytes of every tensor in a safetensors file, read from its header (an 8-byte length, then JSON). */
function safetensorsBytes(file: string): number {
  const fd = openSync(file, 'r');
  try {
    const length = Buffer.alloc(8);
    readSync(fd, length, 0, 8, 0);
    const header = Buffer.alloc(Number(length.readBigUInt64LE(0)));
    readSync(fd, header, 0, header.length, 8);
    const tensors = JSON.parse(header.toString('utf8')) as Record<string, { dtype: string; shape: number[] }>;
    delete tensors.__metadata__;
    return Object.values(tensors).reduce((sum, { dtype, shape }) => sum + (DTYPE_BYTES[dtype] as number) * shape.reduce((a, b) => a * b, 1), 0);
  } finally {
    closeSync(fd);
  }
}

t.test('1. health', async (t) => {
  const { status: code, body } = await json<{ status: string }>(`${url}/admin/health`);
  t.equal(code, 200);
  t.equal(body.status, 'healthy');
});

t.test('2. baseline: nothing loaded at start-up', async (t) => {
  const s = await status();
  t.equal(s.memory.model_loaded, false);
  t.equal(s.model.state, 'unloaded');
  t.equal(s.memory.active_memory_gb, 0);
  const settled = await settledRss(url);
  baseline = settled.rss;
  t.comment(`pre-load baseline ${(baseline * 1024).toFixed(1)} MB (settled after ${settled.seconds.toFixed(0)} s; ${(s.memory.rss_gb * 1024).toFixed(1)} MB right after start-up)`);
});

t.test('3. on-demand loading: the first request loads the model', async (t) => {
  const r = await complete('MLX Test 1');
  t.equal(r.status, 200);
  t.ok(r.body.choices[0].text.length > 0);
  const s = await status();
  t.equal(s.memory.model_loaded, true);
  t.equal(s.model.name, 'tiny-qwen3');
  t.equal(s.model.loads, 1);
  t.ok(s.memory.model_memory_gb >= 0.1, `model holds ${s.memory.model_memory_gb} GB (>= 0.1)`);
  t.ok(s.memory.active_memory_gb >= s.memory.model_memory_gb, 'the process measures at least the weights');
  t.ok(s.model.load_seconds !== null && s.model.load_seconds > 0);
  loadedDelta = s.memory.rss_gb - baseline;
  weightsBytes = safetensorsBytes(join(TEST_CACHE_DIR, 'tiny-qwen3', 'model.safetensors'));
  t.ok(weightsBytes > 100 * 2 ** 20, `the weights' files hold ${(weightsBytes / 2 ** 20).toFixed(1)} MB of tensors`);
});

t.test('4. subsequent requests reuse the loaded model', async (t) => {
  for (let i = 1; i <= 3; i++) t.equal((await complete(`Query ${i}`)).status, 200);
  const s = await status();
  t.equal(s.model.loads, 1, 'no reload');
  t.equal(s.requests.total, 4);
});

t.test('5. concurrent requests are all answered, as if run alone', async (t) => {
  const prompts = ['alpha', 'beta', 'gamma', 'delta', 'epsilon'];
  const alone = [];
  for (const p of prompts) alone.push((await complete(p)).body.choices[0].text);
  const together = await Promise.all(prompts.map((p) => complete(p)));
  t.same(together.map((r) => r.status), prompts.map(() => 200));
  t.same(together.map((r) => r.body.choices[0].text), alone, 'no interleaving corrupts a sequence');
  t.equal((await status()).requests.active, 0);
});

t.test('6. manual unload, and 7. memory recovery', async (t) => {
  const r = await post(`${url}/admin/unload`, {});
  t.equal(r.status, 200);
  t.equal(r.body.status, 'success');
  t.ok(r.body.memory_freed_gb > 0, `freed ${r.body.memory_freed_gb} GB`);
  const s = await status();
  t.equal(s.memory.model_loaded, false);
  t.equal(s.model.state, 'unloaded');
  const settled = (await settledRss(url)).rss;
  const signed = (gb: number): string => `${gb >= 0 ? '+' : ''}${(gb * 1024).toFixed(1)} MB`;
  const recovery = 1 - (settled - baseline) / loadedDelta;
  t.comment(`baseline ${(baseline * 1024).toFixed(1)} MB, loaded ${signed(loadedDelta)}, right after the unload ${signed(s.memory.rss_gb - baseline)}, settled ${signed(settled - baseline)}`);
  t.ok(recovery >= SEED_RECOVERY_TARGET, `recovered ${(recovery * 100).toFixed(1)}% of what loading added (the seed's pass criterion: ${SEED_RECOVERY_TARGET * 100}%)`);
  const again = await post(`${url}/admin/unload`, {});
  t.equal(again.status, 409, 'unloading nothing is a clear 4xx');
  t.equal(again.body.error.code, 'nothing_loaded');
});

t.test('8. reload after unload', async (t) => {
  t.equal((await complete('RELOADED')).status, 200);
  const s = await status();
  t.equal(s.memory.model_loaded, true);
  t.equal(s.model.loads, 2);
});

t.test('9. idle timeout unloads; polling status is not activity', async (t) => {
  const started = Date.now();
  let unloadedAfter = -1;
  while (Date.now() - started < (IDLE_SECONDS + 10) * 1000) {
    await sleep(200);
    await json(`${url}/admin/health`);
    if ((await status()).model.state === 'unloaded') {
      unloadedAfter = (Date.now() - started) / 1000;
      break;
    }
  }
  t.ok(unloadedAfter >= IDLE_SECONDS - 1, `unloaded after ${unloadedAfter}s, not before the ${IDLE_SECONDS}s timeout`);
  t.ok(unloadedAfter > 0 && unloadedAfter <= IDLE_SECONDS + 3, 'unloaded close to the timeout while being polled');
  t.equal((await status()).model.unloads, 2);
});

t.test('10. no leak: ten load/unload cycles', async (t) => {
  // Measured from where the two loads above left the process, so that what a first load and its
  // first generations set up once (code compiled, pools grown) is not read as a leak; the rule
  // against the start-up baseline is step 7's, and the seed's own 0.1 GB check is the last below.
  const before = (await settledRss(url)).rss;
  const residual = await assertNoLeakOverCycles(t, url, {
    cycles: 10,
    baseline: before,
    weightsBytes,
    cycle: async (index) => {
      t.equal((await post(`${url}/admin/load`, { model: 'tiny-qwen3' })).status, 200);
      t.equal((await complete(`cycle ${index}`, { max_tokens: 32 })).status, 200);
      t.equal((await post(`${url}/admin/unload`, {})).status, 200);
    },
  });
  const finalDelta = before + residual - baseline;
  t.comment(`settled ${((before - baseline) * 1024).toFixed(1)} MB above the start-up baseline after two loads`);
  t.ok(finalDelta < 0.1, `the seed's leak check: ${(finalDelta * 1024).toFixed(1)} MB above the start-up baseline after twelve loads (< 0.1 GB)`);
});

t.test('11. status API fields', async (t) => {
  const s = await status();
  for (const field of ['status', 'memory', 'requests', 'idle_timeout_seconds'] as const) t.ok(field in s, field);
  for (const field of ['active_memory_gb', 'peak_memory_gb', 'rss_gb', 'model_loaded', 'model_memory_gb'] as const) t.ok(field in s.memory, `memory.${field}`);
  for (const field of ['total', 'active', 'queued', 'uptime_seconds', 'last_activity'] as const) t.ok(field in s.requests, `requests.${field}`);
  for (const field of ['name', 'state', 'loaded_at', 'load_seconds'] as const) t.ok(field in s.model, `model.${field}`);
  t.equal(s.idle_timeout_seconds, IDLE_SECONDS);
  t.ok(s.memory.peak_memory_gb >= loadedDelta * 0.9, 'peak remembers the loaded model');
});

t.test('request tracking: queued while the model loads, then active, then back to zero', async (t) => {
  t.equal((await status()).model.state, 'unloaded', 'the requests below wait for a load');
  let finished = false;
  const pending = Promise.all([1, 2, 3].map((i) => complete(`track ${i}`, { max_tokens: 48 }))).finally(() => {
    finished = true;
  });
  let sawActive = 0;
  let sawQueued = 0;
  while (!finished && sawActive === 0) {
    const h = (await json<{ active_requests: number; queued_requests: number }>(`${url}/admin/health`)).body;
    sawActive = Math.max(sawActive, h.active_requests);
    sawQueued = Math.max(sawQueued, h.queued_requests);
    await sleep(20);
  }
  await pending;
  t.ok(sawQueued >= 1, `saw ${sawQueued} queued`);
  t.ok(sawActive >= 1, `saw ${sawActive} active`);
  const s = await status();
  t.equal(s.requests.active, 0);
  t.equal(s.requests.queued, 0);
});

t.test('a load that starts before anyone polls status is still measured against the pre-load baseline', async (t) => {
  const fresh = await startServer(['--idle-timeout', '0']);
  t.teardown(() => fresh.stop());
  t.equal((await post(`${fresh.url}/v1/completions`, { prompt: 'first thing', max_tokens: 2 })).status, 200);
  const s = await serverStatus(fresh.url);
  t.ok(s.memory.active_memory_gb >= s.memory.model_memory_gb, `active ${s.memory.active_memory_gb} GB holds at least the weights' ${s.memory.model_memory_gb} GB`);
});
