/**
 * Five stress scenarios that Ollama-compatible servers are commonly put through, run against our
 * server with the built-in model and the `ollama` CLI: concurrent `run` commands, one long streamed
 * generation, three sessions at once, memory under 4 concurrent requests, and invalid models
 * mixed into valid load. Numbers are printed as comments; nothing here asserts on time.
 */
import t from 'tap';
import { cli } from './helpers/cli.ts';
import type { ServerStatus } from '../src/api/admin.ts';
import { json, post, serverStatus, startServer } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0']);
t.teardown(() => server.stop());
const host = ['--host', server.url];
const model = 'tiny-qwen3';

const status = (): Promise<ServerStatus> => serverStatus(server.url);

/** NDJSON objects of a streamed /api/generate, as `curl -N` would show them. */
async function streamGenerate(body: Record<string, unknown>): Promise<Record<string, any>[]> {
  const response = await fetch(`${server.url}/api/generate`, { method: 'POST', body: JSON.stringify(body) });
  t.equal(response.headers.get('content-type'), 'application/x-ndjson');
  return (await response.text()).split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

t.before(async () => {
  await post(`${server.url}/api/generate`, { model, prompt: '' });
});

t.test('1. five concurrent run commands all answer', async (t) => {
  const runs = await Promise.all(Array.from({ length: 5 }, (_, i) => cli(['run', model, '--num-predict', '8', ...host], `Request ${i + 1} from user ${i + 1}\n`)));
  runs.forEach((r, i) => {
    t.equal(r.code, 0, `run ${i + 1} exits 0 ${r.stderr}`);
    t.ok(r.stdout.trim().length > 0, `run ${i + 1} printed an answer`);
  });
});

t.test('2. one long streamed generation', async (t) => {
  const before = await status();
  const objects = await streamGenerate({ model, prompt: 'Write a 500-word story about a robot learning to paint', stream: true, options: { num_predict: 256 } });
  const last = objects.at(-1) as Record<string, any>;
  t.equal(last.done, true);
  t.equal(last.eval_count, 256);
  t.ok(objects.slice(0, -1).every((o) => o.done === false && typeof o.response === 'string'), 'every other object is a text chunk');
  const words = objects.map((o) => o.response).join('').split(/\s+/).filter(Boolean).length;
  const after = await status();
  t.comment(`256 tokens (${words} words) in ${(last.total_duration / 1e9).toFixed(2)} s, ${(last.eval_count / (last.eval_duration / 1e9)).toFixed(1)} tok/s; rss ${before.memory.rss_gb} -> ${after.memory.rss_gb} GB`);
  t.ok(after.memory.model_loaded);
});

t.test('3. three sessions at once: two repeated run commands and one streamed request', async (t) => {
  const session = async (name: string): Promise<number> => {
    let ok = 0;
    for (let i = 0; i < 3; i++) {
      const r = await cli(['run', model, '--num-predict', '8', ...host], `${name}\n`);
      if (r.code === 0 && r.stdout.trim()) ok++;
    }
    return ok;
  };
  const [one, two, three] = await Promise.all([session('Session 1'), session('Session 2'), streamGenerate({ model, prompt: 'Session 3', stream: true, options: { num_predict: 32 } })]);
  t.equal(one, 3, 'session 1: every run answered');
  t.equal(two, 3, 'session 2: every run answered');
  t.equal(three.at(-1)?.eval_count, 32, 'session 3: the streamed answer is complete');
});

t.test('4. memory measured under four concurrent requests', async (t) => {
  const samples: ServerStatus[] = [];
  let running = true;
  const sampler = (async () => {
    while (running) {
      samples.push(await status());
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const answers = await Promise.all(Array.from({ length: 4 }, (_, i) => post(`${server.url}/api/generate`, { model, prompt: `Request ${i + 1}`, stream: false, options: { num_predict: 32 } })));
  running = false;
  await sampler;
  const after = await status();
  t.ok(answers.every((a) => a.status === 200 && a.body.eval_count === 32), 'all four answered in full');
  t.ok(samples.some((s) => s.requests.active > 1), 'requests ran at the same time');
  const peakRss = Math.max(...samples.map((s) => s.memory.rss_gb));
  t.comment(`rss during load: peak ${peakRss} GB over ${samples.length} samples; after ${after.memory.rss_gb} GB; model ${after.memory.active_memory_gb} GB above baseline`);
  t.ok(peakRss > 0 && peakRss < 4, `peak rss ${peakRss} GB stays bounded for a 150 MB model`);
  t.equal(after.requests.active, 0, 'nothing left running');
});

t.test('5. invalid models mixed into valid load: valid ones succeed, invalid ones get 404 at once', async (t) => {
  const order: string[] = [];
  const track = <T>(name: string, promise: Promise<T>): Promise<T> => promise.finally(() => order.push(name));
  const valid = Array.from({ length: 3 }, (_, i) => track('valid', post(`${server.url}/api/generate`, { model, prompt: `Valid request ${i + 1}`, stream: false, options: { num_predict: 32 } })));
  const invalid = Array.from({ length: 2 }, (_, i) => track('invalid', post(`${server.url}/api/generate`, { model: 'nonexistent-model', prompt: `Invalid ${i + 1}`, stream: false })));
  const [validAnswers, invalidAnswers] = await Promise.all([Promise.all(valid), Promise.all(invalid)]);
  t.ok(validAnswers.every((a) => a.status === 200 && a.body.done === true && a.body.eval_count === 32), 'every valid request answered in full');
  for (const a of invalidAnswers) {
    t.equal(a.status, 404);
    t.match(a.body.error, /model 'nonexistent-model' not found/);
  }
  t.same(order.slice(0, 2), ['invalid', 'invalid'], 'the 404s came back before any valid answer');
  const health = await json(`${server.url}/admin/health`);
  t.equal(health.status, 200, 'the server is still healthy');
});
