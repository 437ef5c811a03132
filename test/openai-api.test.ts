import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { json, post, startServer, tempDir } from './helpers/server.ts';

const logFile = join(tempDir('mlx-log-'), 'server.log');
const server = await startServer(['--idle-timeout', '0', '--max-body', '65536', '--log-file', logFile]);
t.teardown(() => server.stop());
const url = server.url;

const greedy = { model: 'tiny-qwen3', temperature: 0, max_tokens: 24, ignore_eos: true };

async function sse(path: string, body: unknown): Promise<{ status: number; events: any[]; raw: string }> {
  const response = await fetch(url + path, { method: 'POST', body: JSON.stringify(body) });
  const raw = await response.text();
  const payloads = raw.split('\n\n').filter(Boolean).map((block) => block.replace(/^data: /, ''));
  t.equal(payloads.at(-1), '[DONE]', 'stream ends with data: [DONE]');
  return { status: response.status, events: payloads.slice(0, -1).map((p) => JSON.parse(p)), raw };
}

t.test('models list names the built-in model', async (t) => {
  const { status, body } = await json<{ object: string; data: { id: string }[] }>(`${url}/v1/models`);
  t.equal(status, 200);
  t.equal(body.object, 'list');
  t.ok(body.data.some((m) => m.id === 'tiny-qwen3'));
});

t.test('completion: usage, length finish and seeded determinism', async (t) => {
  const a = await post(`${url}/v1/completions`, { ...greedy, prompt: 'Hello world' });
  t.equal(a.status, 200);
  t.equal(a.body.object, 'text_completion');
  t.equal(a.body.choices[0].finish_reason, 'length');
  t.equal(a.body.usage.completion_tokens, 24);
  t.equal(a.body.usage.total_tokens, a.body.usage.prompt_tokens + 24);
  t.ok(a.body.choices[0].text.length > 0);
  const b = await post(`${url}/v1/completions`, { ...greedy, prompt: 'Hello world' });
  t.equal(b.body.choices[0].text, a.body.choices[0].text, 'greedy output is reproducible');
  const s1 = await post(`${url}/v1/completions`, { ...greedy, temperature: 0.9, top_k: 50, seed: 7, prompt: 'Hi' });
  const s2 = await post(`${url}/v1/completions`, { ...greedy, temperature: 0.9, top_k: 50, seed: 7, prompt: 'Hi' });
  const s3 = await post(`${url}/v1/completions`, { ...greedy, temperature: 0.9, top_k: 50, seed: 8, prompt: 'Hi' });
  t.equal(s1.body.choices[0].text, s2.body.choices[0].text, 'same seed, same text');
  t.not(s1.body.choices[0].text, s3.body.choices[0].text, 'another seed, another text');
  const p = await post(`${url}/v1/completions`, { ...greedy, temperature: 1, top_p: 0.5, min_p: 0.05, repetition_penalty: 1.3, seed: 3, prompt: 'Hi' });
  t.equal(p.status, 200, 'top_p, min_p and repetition_penalty are accepted');
  t.equal(p.body.usage.completion_tokens, 24);
});

t.test('streamed chat equals the non-streamed answer, ends with usage and [DONE]', async (t) => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello in 日本語 🌸' }];
  const whole = await post(`${url}/v1/chat/completions`, { ...greedy, messages });
  t.equal(whole.status, 200);
  t.equal(whole.body.object, 'chat.completion');
  t.equal(whole.body.choices[0].message.role, 'assistant');
  const { events } = await sse('/v1/chat/completions', { ...greedy, messages, stream: true, stream_options: { include_usage: true } });
  t.same(events[0].choices[0].delta, { role: 'assistant', content: '' }, 'first chunk carries the role');
  const text = events.flatMap((e) => e.choices.map((c: any) => c.delta?.content ?? '')).join('');
  t.equal(text, whole.body.choices[0].message.content, 'stream and whole agree');
  const finish = events.find((e) => e.choices[0]?.finish_reason);
  t.equal(finish.choices[0].finish_reason, 'length');
  const usage = events.at(-1);
  t.same(usage.choices, []);
  t.equal(usage.usage.completion_tokens, 24);
  t.ok(events.every((e) => e.object === 'chat.completion.chunk' && e.id === events[0].id));
});

t.test('a stop string is never emitted, even when it spans tokens', async (t) => {
  const reference = (await post(`${url}/v1/completions`, { ...greedy, max_tokens: 40, prompt: 'Once upon a time' })).body.choices[0].text as string;
  const stop = reference.slice(Math.floor(reference.length / 2), Math.floor(reference.length / 2) + 6);
  t.ok(stop.length > 1, `stop string '${stop}'`);
  const cut = reference.slice(0, reference.indexOf(stop));
  const whole = await post(`${url}/v1/completions`, { ...greedy, max_tokens: 40, prompt: 'Once upon a time', stop: [stop, 'zzzz-never'] });
  t.equal(whole.body.choices[0].text, cut);
  t.equal(whole.body.choices[0].finish_reason, 'stop');
  const { events } = await sse('/v1/completions', { ...greedy, max_tokens: 40, prompt: 'Once upon a time', stop, stream: true });
  t.equal(events.map((e) => e.choices[0].text).join(''), cut, 'streamed text stops before the stop string');
});

t.test('prompt as token ids', async (t) => {
  const r = await post(`${url}/v1/completions`, { ...greedy, max_tokens: 4, prompt: [9707, 1879] });
  t.equal(r.status, 200);
  t.equal(r.body.usage.prompt_tokens, 2);
});

t.test('errors use the OpenAI shape and the right status', async (t) => {
  const shape = (body: any, code: string) => {
    t.type(body.error.message, 'string');
    t.equal(body.error.code, code);
    t.ok('type' in body.error && 'param' in body.error);
  };
  let r = await post(`${url}/v1/completions`, '{"prompt": "unterminated');
  t.equal(r.status, 400);
  shape(r.body, 'invalid_json');
  r = await post(`${url}/v1/completions`, '[1,2]');
  t.equal(r.status, 400);
  r = await post(`${url}/v1/completions`, { prompt: 42 });
  t.equal(r.status, 400);
  t.equal(r.body.error.param, 'prompt');
  r = await post(`${url}/v1/completions`, {});
  t.equal(r.status, 400, 'missing prompt');
  r = await post(`${url}/v1/chat/completions`, { messages: [] });
  t.equal(r.status, 400, 'empty messages');
  r = await post(`${url}/v1/chat/completions`, { messages: [{ role: 'wizard', content: 'x' }] });
  t.equal(r.status, 400, 'bad role');
  for (const [field, value] of [['max_tokens', -1], ['max_tokens', 1.5], ['temperature', 2.5], ['temperature', 'hot'], ['top_p', 0], ['top_p', 1.1], ['n', 5], ['stream', 'yes']] as const) {
    r = await post(`${url}/v1/completions`, { prompt: 'x', [field]: value });
    t.equal(r.status, 400, `${field}=${JSON.stringify(value)} is refused`);
    t.equal(r.body.error.param, field);
  }
  r = await post(`${url}/v1/completions`, { prompt: 'x', frobnicate: true });
  t.equal(r.status, 400, 'unknown field');
  t.match(r.body.error.message, /frobnicate/);
  r = await post(`${url}/v1/completions`, { prompt: 'x', model: 'no-such-model' });
  t.equal(r.status, 404);
  shape(r.body, 'model_not_found');
  t.match(r.body.error.message, /tiny-qwen3/, 'lists what is available');
  r = await post(`${url}/v1/completions`, { prompt: 'x', model: '../../etc' });
  t.equal(r.status, 404, 'a path is not a model name');
  r = await post(`${url}/v1/completions`, { prompt: 'x'.repeat(70_000) });
  t.equal(r.status, 413);
  shape(r.body, 'body_too_large');
  r = await post(`${url}/v1/completions`, { prompt: 'hello '.repeat(5000), max_tokens: 10 });
  t.equal(r.status, 400);
  shape(r.body, 'context_length_exceeded');
  t.match(r.body.error.message, /4096/);
  r = await post(`${url}/v1/completions`, { prompt: [1, 999999999] });
  t.equal(r.status, 400, 'token id outside the vocabulary');
  r = await json(`${url}/v1/nothing-here`);
  t.equal(r.status, 404);
  r = await json(`${url}/v1/completions`);
  t.equal(r.status, 405, 'GET on a POST route');
  const health = await json(`${url}/admin/health`);
  t.equal(health.status, 200, 'still healthy after all that');
});

t.test('every request is logged with its id, to stdout and to --log-file', async (t) => {
  const r = await fetch(`${url}/v1/models`, { headers: { 'x-request-id': 'trace-me-42' } });
  t.equal(r.headers.get('x-request-id'), 'trace-me-42', 'the id is echoed back');
  await new Promise((resolve) => setTimeout(resolve, 300));
  const line = (text: string) => text.split('\n').find((l) => l.includes('"reqId":"trace-me-42"'));
  t.ok(line(server.logs.join('\n')), 'in the stdout log');
  const fileLine = line(readFileSync(logFile, 'utf8'));
  t.ok(fileLine, 'in the log file');
  t.match(JSON.parse(fileLine as string), { method: 'GET', path: '/v1/models', status: 200 });
});
