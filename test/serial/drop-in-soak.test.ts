/**
 * Fleets that ran the Python MLX inference server check each machine with its soak script,
 * air_comprehensive_test.sh. This test makes the same calls in the same order, to the same
 * ports, and applies the same pass rules, against a server started with default flags: the
 * client API on 11436, admin on 11437. If it fails, that script fails on a fleet machine that
 * switches to us. (docs/compatibility.md lists every field and status it relies on.)
 *
 * The script waits up to 210 s for a 180 s idle timeout; here the timeout is 3 s and the wait
 * is the same 30 s beyond it. The script is bash with python3 reading JSON, so "False" there is
 * a JSON false here, and "field present" is `in` on the parsed object.
 */
import t from 'tap';
import type { ServerStatus } from '../../src/api/admin.ts';
import { json, sleep, serverStatus, startServer } from '../helpers/server.ts';

const ADMIN_API = 'http://localhost:11437';
const MAIN_API = 'http://localhost:11436';
const MODEL = 'tiny-qwen3';
const IDLE_SECONDS = 3;

const server = await startServer(['--idle-timeout', String(IDLE_SECONDS)], {}, { defaultPorts: true });
t.teardown(() => server.stop());
t.equal(server.port, 11437, 'admin API on 11437 by default');
t.equal(server.mainPort, 11436, 'main API on 11436 by default');

const status = (): Promise<ServerStatus> => serverStatus(ADMIN_API);
const memoryGb = async (): Promise<number> => (await status()).memory.active_memory_gb;
const modelLoaded = async (): Promise<boolean> => (await status()).memory.model_loaded;

/** The script's completion call: curl -X POST $MAIN_API/v1/completions with exactly this body. */
async function completion(prompt: string, maxTokens: number): Promise<{ status: number; text: string; raw: string }> {
  const response = await fetch(`${MAIN_API}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  const raw = await response.text();
  let text: unknown;
  try {
    text = (JSON.parse(raw) as { choices?: { text?: unknown }[] }).choices?.[0]?.text;
  } catch {
    text = undefined;
  }
  return { status: response.status, text: typeof text === 'string' ? text : 'PARSE_ERROR', raw };
}

let baselineMem = 0;
let loadedMem = 0;

t.test('1. health check: /admin/health says healthy', async (t) => {
  const health = await json<{ status: string }>(`${ADMIN_API}/admin/health`);
  t.equal(health.body.status, 'healthy');
});

t.test('2. baseline: no model loaded', async (t) => {
  baselineMem = await memoryGb();
  t.equal(await modelLoaded(), false, 'memory.model_loaded is a JSON false (python prints False)');
  t.type(baselineMem, 'number', 'memory.active_memory_gb is a number');
});

t.test('3. on-demand loading: the first completion on the main API loads the model', async (t) => {
  const first = await completion("Hello! Respond with exactly: 'MLX Test 1 OK'", 20);
  t.not(first.text, 'PARSE_ERROR', `choices[0].text present: ${first.raw.slice(0, 200)}`);
  loadedMem = await memoryGb();
  t.ok(loadedMem > baselineMem, `memory after load ${loadedMem} GB (delta ${(loadedMem - baselineMem).toFixed(2)} GB)`);
});

t.test('4. follow-up queries are answered by the loaded model', async (t) => {
  for (let i = 1; i <= 3; i++) {
    const reply = await completion(`Count: ${i}. Reply with just the number.`, 10);
    t.not(reply.text, 'PARSE_ERROR', `query ${i}/3`);
    await sleep(1000);
  }
});

t.test('5. three concurrent completions all carry "choices"', async (t) => {
  const replies = await Promise.all([1, 2, 3].map((i) => completion(`Concurrent ${i}`, 10)));
  replies.forEach((reply, i) => t.match(reply.raw, '"choices"', `concurrent request ${i + 1}`));
});

t.test('6. manual unload on the admin API answers status "success" with memory_freed_gb', async (t) => {
  const response = await fetch(`${ADMIN_API}/admin/unload`, { method: 'POST' });
  const body = (await response.json()) as { status: string; memory_freed_gb: number };
  t.equal(body.status, 'success');
  t.type(body.memory_freed_gb, 'number');
});

t.test('7. memory recovery of at least 95%', async (t) => {
  await sleep(2000);
  const afterUnload = await memoryGb();
  const recoveryPct = (1 - Math.abs(afterUnload - baselineMem) / loadedMem) * 100;
  t.ok(recoveryPct >= 95, `recovery ${recoveryPct.toFixed(2)}% (baseline ${baselineMem} GB, after unload ${afterUnload} GB)`);
});

t.test('8. reload after unload', async (t) => {
  const reply = await completion('Reload test. Say: RELOADED', 10);
  t.not(reply.text, 'PARSE_ERROR', reply.raw.slice(0, 200));
});

t.test('9. idle timeout unloads the model', async (t) => {
  const started = Date.now();
  let unloadedAfter = -1;
  while (Date.now() - started < (IDLE_SECONDS + 30) * 1000) {
    await sleep(1000);
    if (!(await modelLoaded())) {
      unloadedAfter = (Date.now() - started) / 1000;
      break;
    }
  }
  t.ok(unloadedAfter > 0, `unloaded after ${unloadedAfter.toFixed(0)} s (timeout ${IDLE_SECONDS} s)`);
});

t.test('10. no leak: final memory within 0.15 GB of the baseline', async (t) => {
  await sleep(2000);
  const finalDelta = Math.abs((await memoryGb()) - baselineMem);
  t.ok(finalDelta < 0.15, `delta ${finalDelta.toFixed(4)} GB`);
});

t.test('11. status has status, memory, requests and idle_timeout_seconds; requests.active_requests is read too', async (t) => {
  const s = (await json<Record<string, unknown>>(`${ADMIN_API}/admin/status`)).body;
  for (const field of ['status', 'memory', 'requests', 'idle_timeout_seconds']) t.ok(field in s, `field '${field}' present`);
  t.equal((await status()).requests.active_requests, 0, 'requests.active_requests');
});

t.test("the same server's documented calls beyond the script", async (t) => {
  const health = await json<{ status: string; model_loaded: unknown }>(`${MAIN_API}/health`);
  t.equal(health.status, 200, 'GET /health on the main API');
  t.equal(health.body.model_loaded, false, 'health says whether a model is loaded');
  t.equal((await json(`${MAIN_API}/ready`)).status, 200, 'ready before any model is loaded: the first request loads it');

  const load = await json<{ status: string; model_name: string; memory_gb: number; load_time: number }>(`${ADMIN_API}/admin/load?model_path=${MODEL}`, { method: 'POST' });
  t.equal(load.status, 200);
  t.equal(load.body.status, 'success');
  t.equal(load.body.model_name, MODEL);
  t.ok(load.body.memory_gb > 0 && load.body.load_time > 0, `memory_gb ${load.body.memory_gb}, load_time ${load.body.load_time}`);
  // Keeps the model loaded through the checks below, whatever the short idle timeout.
  t.equal((await json(`${MAIN_API}/api/generate`, { method: 'POST', body: JSON.stringify({ model: MODEL, keep_alive: -1 }) })).status, 200);

  const s = await serverStatus(ADMIN_API);
  t.equal(s.memory.model_loaded, true);
  t.ok(s.requests.total >= 6, `requests.total ${s.requests.total}`);
  t.equal(s.requests.active, 0);
  t.type(s.requests.uptime, 'number');
  t.ok(!Number.isNaN(Date.parse(s.requests.last_activity)), 'requests.last_activity is a timestamp');
  t.same(s.model, { ...s.model, loaded: true, name: MODEL, memory_gb: load.body.memory_gb }, 'model {loaded, name, memory_gb}');
  t.same(s.worker, { healthy: true, status: 'healthy' });
  t.equal(s.config.idle_timeout_seconds, IDLE_SECONDS);
  t.equal(s.idle_timeout_seconds, IDLE_SECONDS);

  for (const path of ['/admin/metrics', '/admin/queue', '/admin/capabilities']) t.equal((await json(`${ADMIN_API}${path}`)).status, 200, `GET ${path}`);
  t.equal((await json(`${MAIN_API}/admin/status`)).status, 404, 'the main API port serves no admin routes');
  t.equal((await json(`${ADMIN_API}/v1/models`)).status, 200, 'the admin port still serves the client APIs, as it always has');

  const unload = await json<{ status: string; model_name: string; unload_time: number }>(`${ADMIN_API}/admin/unload`, { method: 'POST' });
  t.same([unload.body.status, unload.body.model_name, typeof unload.body.unload_time], ['success', MODEL, 'number']);
  t.equal((await json(`${ADMIN_API}/admin/unload`, { method: 'POST' })).status, 409, 'unloading nothing stays a 409 for existing clients (docs/compatibility.md)');
});
