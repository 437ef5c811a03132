/**
 * Admission after load, against real server processes on the built-in model: --max-batch bounds
 * the requests running in the worker, --max-queue the ones waiting in front of it, a request
 * beyond both is refused with 503 and Retry-After in its API's own shape, a client that leaves
 * while waiting (for a running place, or for a model load) never reaches the worker, and a
 * request whose KV cache could never fit in the model's KV budget is refused with a 400 that
 * states the numbers.
 */
import t from 'tap';
import { estimateLoadBytes } from '../src/models/footprint.ts';
import { builtinModelVariant, json, logEvents, post, serverStatus, sleep, startServer, waitFor, type TestServer } from './helpers/server.ts';

type Health = { active_requests: number; queued_requests: number };
const health = async (server: TestServer): Promise<Health> => (await json<Health>(`${server.url}/admin/health`)).body;

/** Polls health until `until` settles and returns the most running and waiting requests seen at once. */
async function peaks(server: TestServer, until: Promise<unknown>): Promise<{ running: number; waiting: number; samples: number }> {
  let settled = false;
  void until.finally(() => (settled = true));
  const seen = { running: 0, waiting: 0, samples: 0 };
  while (!settled) {
    const h = await health(server);
    seen.running = Math.max(seen.running, h.active_requests);
    seen.waiting = Math.max(seen.waiting, h.queued_requests);
    seen.samples++;
    await sleep(10);
  }
  return seen;
}

/** Exposition lines as `name{labels}` -> value. */
async function metrics(server: TestServer): Promise<Map<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const sample = /^(\S+?(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (sample && !line.startsWith('#')) samples.set(sample[1] as string, Number(sample[2]));
  }
  return samples;
}

const MAX_BATCH = 2;
const MAX_QUEUE = 3;
const TOKENS = 64;

t.test('after load, at most --max-batch run and --max-queue wait; beyond that every API answers 503 with Retry-After', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--max-batch', String(MAX_BATCH), '--max-queue', String(MAX_QUEUE)]);
  t.teardown(() => server.stop());
  t.equal((await post(`${server.url}/admin/load`, {})).status, 200);

  // Exactly enough to fill every running place and every waiting one.
  const started = performance.now();
  const accepted = Array.from({ length: MAX_BATCH + MAX_QUEUE }, (_, i) => {
    const sent = performance.now();
    return post(`${server.url}/v1/completions`, { prompt: `fill ${i}`, max_tokens: TOKENS, ignore_eos: true }).then((r) => ({ ...r, seconds: (performance.now() - sent) / 1000 }));
  });
  const all = Promise.all(accepted);
  const watched = peaks(server, all);
  await waitFor('every place to be taken', async () => {
    const h = await health(server);
    return h.active_requests === MAX_BATCH && h.queued_requests === MAX_QUEUE ? true : undefined;
  }, 60_000);

  // One more on each route, while the queue is full: refused at once, in the route's own shape.
  const openAi = await post(`${server.url}/v1/completions`, { prompt: 'one too many', max_tokens: 4 });
  t.equal(openAi.status, 503, 'OpenAI completions: 503');
  t.equal(openAi.body.error.code, 'queue_full');
  t.equal(openAi.headers.get('retry-after'), '1');
  const openAiChat = await post(`${server.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'one too many' }], max_tokens: 4 });
  t.equal(openAiChat.status, 503, 'OpenAI chat: 503');
  t.equal(openAiChat.headers.get('retry-after'), '1');
  for (const [path, body] of [
    ['/api/generate', { model: 'tiny-qwen3', prompt: 'one too many', options: { num_predict: 4 } }],
    ['/api/chat', { model: 'tiny-qwen3', messages: [{ role: 'user', content: 'one too many' }], options: { num_predict: 4 } }],
  ] as const) {
    const ollama = await post(`${server.url}${path}`, body);
    t.equal(ollama.status, 503, `Ollama ${path}: 503`);
    t.equal(typeof ollama.body.error, 'string', `Ollama ${path}: Ollama's error shape`);
    t.match(ollama.body.error, /--max-queue/);
    t.equal(ollama.headers.get('retry-after'), '1', `Ollama ${path}: Retry-After`);
  }

  const answers = await all;
  const seen = await watched;
  t.comment(`${seen.samples} health samples over ${((performance.now() - started) / 1000).toFixed(1)} s`);
  t.equal(seen.running, MAX_BATCH, `never more than ${MAX_BATCH} running (and the bound was reached)`);
  t.equal(seen.waiting, MAX_QUEUE, `never more than ${MAX_QUEUE} waiting (and the bound was reached)`);
  for (const answer of answers) {
    t.equal(answer.status, 200);
    t.equal(answer.body.usage.completion_tokens, TOKENS, 'answered in full after waiting its turn');
  }

  // The worker's own acknowledgements (one generation_start per request it took, one done per
  // finished request) never overlap more than --max-batch deep.
  let depth = 0;
  let deepest = 0;
  for (const line of server.logs) {
    if (line.includes('"event":"generation_start"')) deepest = Math.max(deepest, ++depth);
    if (line.includes('"path":"/v1/completions"') && line.includes('"status":200')) depth--;
  }
  t.ok(deepest <= MAX_BATCH && deepest > 0, `the worker held at most ${deepest} requests at once`);

  // The queue time is the wait for a running place: the last three cannot start before one of
  // the first two has generated all its tokens, which takes about as long as the fastest answer.
  const fastest = Math.min(...answers.map((a) => a.seconds));
  const samples = await metrics(server);
  t.equal(samples.get('mlx:request_queue_time_seconds_count'), MAX_BATCH + MAX_QUEUE, 'one queue-time sample per admitted request');
  const bounds = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60].filter((le) => le <= fastest / 2);
  const below = bounds.length ? (samples.get(`mlx:request_queue_time_seconds_bucket{le="${bounds.at(-1)}"}`) ?? 0) : 0;
  t.ok(MAX_BATCH + MAX_QUEUE - below >= MAX_QUEUE, `${MAX_BATCH + MAX_QUEUE - below} requests waited longer than ${bounds.at(-1) ?? 0} s (half the fastest answer, ${fastest.toFixed(2)} s)`);
  t.equal(samples.get('mlx:num_requests_running'), 0);
  t.equal(samples.get('mlx:num_requests_waiting'), 0);
  t.equal(samples.get('mlx:request_rejected_total'), 4);

  const chat = await post(`${server.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'a chat prompt, templated and tokenized off the MLX thread' }], max_tokens: 4 });
  t.equal(chat.status, 200);
  t.equal((await metrics(server)).get('mlx:worker_tokenize_seconds_total'), 0, 'the MLX worker tokenized no prompt, text or chat: the prompt tokenizer thread did');
});

t.test('a request cancelled while it waits never reaches the worker', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--max-batch', '1', '--max-queue', '4']);
  t.teardown(() => server.stop());
  t.equal((await post(`${server.url}/admin/load`, {})).status, 200);
  const running = post(`${server.url}/v1/completions`, { prompt: 'alpha keeps the only running place', max_tokens: 96, ignore_eos: true });
  await waitFor('the first request to run', async () => ((await health(server)).active_requests === 1 ? true : undefined), 60_000);

  const leaving = new AbortController();
  const waitingId = 'waits-then-leaves';
  const waiting = fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'x-request-id': waitingId },
    body: JSON.stringify({ prompt: Array.from({ length: 300 }, (_, i) => 1000 + i), max_tokens: 8 }),
    signal: leaving.signal,
  }).catch(() => null);
  await waitFor('the second request to wait', async () => ((await health(server)).queued_requests === 1 ? true : undefined));
  leaving.abort();
  await waiting;
  const cancelled = await waitFor('the cancellation', () => logEvents(server, 'cancelled').find((e) => e.reqId === waitingId));
  t.equal(cancelled.whileWaiting, true, 'cancelled while waiting');
  t.equal((await health(server)).queued_requests, 0, 'it no longer counts as waiting');

  const first = await running;
  const after = await post(`${server.url}/v1/completions`, { prompt: 'charlie comes after', max_tokens: 4 });
  t.equal(first.status, 200);
  t.equal(after.status, 200, 'the running place is free again');
  const reached = [...logEvents(server, 'admitted'), ...logEvents(server, 'generation_start')].filter((e) => e.reqId === waitingId);
  t.same(reached, [], 'never admitted, and the worker never started it');
  const status = await serverStatus(server.url);
  t.equal(status.tokens.prompt, first.body.usage.prompt_tokens + after.body.usage.prompt_tokens, "the worker prefilled only the other two requests' prompts, not its 300 tokens");
});

t.test('a request whose KV cache could not fit in the budget even alone gets a 400 with the numbers', async (t) => {
  // The built-in model with a very long context, so one request can ask for more KV cache than
  // a 1 GB --memory-limit leaves after the weights.
  const { modelsDir, path: model } = builtinModelVariant('long-context', { max_position_embeddings: 10_000_000 });
  const limit = estimateLoadBytes(model, true).dequantized + 2 ** 30;
  const server = await startServer(['--idle-timeout', '0', '--models-dir', modelsDir, '--model', 'long-context', '--memory-limit', String(limit), '--memory-reserve', '0', '--prompt-cache-bytes', '0']);
  t.teardown(() => server.stop());
  t.equal((await post(`${server.url}/admin/load`, {})).status, 200);
  const kv = (await serverStatus(server.url)).kv_cache;
  if (!kv) return t.fail('the status reports a KV budget after the load');
  const budgetTokens = Math.floor(kv.budget_bytes / kv.bytes_per_token);
  t.ok(budgetTokens > 1000 && budgetTokens < 1_000_000, `a KV budget of ${budgetTokens} tokens (${kv.bytes_per_token} bytes a token)`);
  const tooMany = budgetTokens + 1000;

  const numbers = new RegExp(`KV cache of ${tooMany + 3} tokens \\(3 in the prompt, ${tooMany} to generate\\).*KV budget is [\\d.]+ MiB \\(${budgetTokens} tokens`);
  const ids = await json(`${server.url}/v1/completions`, { method: 'POST', headers: { 'x-request-id': 'counted-ids' }, body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: tooMany }) });
  t.equal(ids.status, 400, 'token ids: refused before waiting');
  t.notOk(logEvents(server, 'generation_start').some((e) => e.reqId === 'counted-ids'), 'a prompt of token ids is counted without the worker');
  const error = (ids.body as { error: { code: string; message: string } }).error;
  t.equal(error.code, 'kv_budget_exceeded');
  t.match(error.message, numbers);
  t.match(error.message, /--memory-reserve/);

  const text = await post(`${server.url}/v1/completions`, { prompt: 'a short prompt', max_tokens: tooMany });
  t.equal(text.status, 400, 'text: refused once the worker has counted its tokens');
  t.match(text.body.error.message, new RegExp(`\\d+ in the prompt, ${tooMany} to generate`));

  const ollama = await post(`${server.url}/api/generate`, { model: 'long-context', prompt: 'no limit on new tokens', stream: false, options: { num_predict: -1 } });
  t.equal(ollama.status, 400, 'Ollama, num_predict -1 (until the context is full): the whole context could not fit');
  t.match(ollama.body.error, /10000000 tokens \(the model's whole context/);

  const fits = await post(`${server.url}/v1/completions`, { prompt: 'a short prompt', max_tokens: 8, ignore_eos: true });
  t.equal(fits.status, 200, 'a request that fits is served');
  t.equal(fits.body.usage.completion_tokens, 8);
  const status = await serverStatus(server.url);
  t.same([status.requests.active, status.requests.queued, status.kv_cache?.reserved_bytes], [0, 0, 0], 'refused requests hold nothing');
});

t.test('a request whose client leaves during a model load leaves the queue at once, and a load it was waiting for never starts', async (t) => {
  const { modelsDir } = builtinModelVariant('other-qwen3', {});
  const server = await startServer(['--idle-timeout', '0', '--models-dir', modelsDir]);
  t.teardown(() => server.stop());
  type LoadHealth = Health & { model_state: string };
  const loadHealth = async (): Promise<LoadHealth> => (await json<LoadHealth>(`${server.url}/admin/health`)).body;
  const leaving = new AbortController();
  const send = (id: string, model: string): Promise<unknown> =>
    fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'x-request-id': id }, body: JSON.stringify({ model, prompt: 'never answered', max_tokens: 8 }), signal: leaving.signal }).catch(() => null);

  // The first request starts the built-in model's load (seconds); the second waits behind it for another model.
  const loadingItsModel = send('leaves-during-its-load', 'tiny-qwen3');
  await waitFor('the load to start', async () => ((await loadHealth()).model_state === 'loading' ? true : undefined), 60_000);
  const waitingForAnother = send('leaves-before-its-load', 'other-qwen3');
  await waitFor('both requests to wait', async () => ((await loadHealth()).queued_requests === 2 ? true : undefined));
  leaving.abort();
  await Promise.all([loadingItsModel, waitingForAnother]);
  const left = await waitFor('both to leave the queue', async () => {
    const h = await loadHealth();
    return h.queued_requests === 0 ? h : undefined;
  }, 2000);
  t.equal(left.model_state, 'loading', 'they left while the model was still loading');
  for (const id of ['leaves-during-its-load', 'leaves-before-its-load']) {
    // The log reaches this process through a pipe, possibly after the health reply.
    const cancelled = await waitFor(`${id}'s cancellation`, () => logEvents(server, 'cancelled').find((e) => e.reqId === id), 2000);
    t.match(cancelled, { reason: 'client', whileWaiting: true, waitingFor: 'model' }, `${id}: cancelled while waiting for the model`);
  }
  t.same(logEvents(server, 'loaded'), [], 'logged before the load finished');

  await waitFor('the load under way to finish', () => (logEvents(server, 'loaded').length === 1 ? true : undefined), 120_000);
  // An unload waits for every lease: one never handed back would keep it waiting.
  const unload = await json(`${server.url}/admin/unload`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(20_000) }).catch((error: Error) => ({ status: error.name }));
  t.equal(unload.status, 200, 'the lease the first request would have held was handed back: the model unloads');
  t.same(
    logEvents(server, 'load_start').map((e) => e.model),
    ['tiny-qwen3'],
    'the other model, whose client had left, was never loaded',
  );
  const reached = [...logEvents(server, 'admitted'), ...logEvents(server, 'generation_start')].filter((e) => String(e.reqId).startsWith('leaves-'));
  t.same(reached, [], 'neither reached the worker');
  t.equal((await serverStatus(server.url)).tokens.prompt, 0, 'the worker prefilled nothing');
});
