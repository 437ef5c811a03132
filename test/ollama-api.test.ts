/** The Ollama-compatible API through the official `ollama` client (and `openai` on the same server), unmodified. */
import { Ollama, type ChatResponse, type GenerateResponse } from 'ollama';
import OpenAI from 'openai';
import t from 'tap';
import { humanParameterCount, parseKeepAlive } from '../src/api/ollama.ts';
import { json, post, startServer } from './helpers/server.ts';

const DEFAULT_MAX_TOKENS = 9;
const server = await startServer(['--idle-timeout', '0', '--default-max-tokens', String(DEFAULT_MAX_TOKENS)]);
t.teardown(() => server.stop());
const ollama = new Ollama({ host: server.url });
const model = 'tiny-qwen3';
const greedy = { temperature: 0, num_predict: 12 };

async function rejection(promise: Promise<unknown>): Promise<{ status_code?: number; error?: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    return error as { status_code?: number; error?: string; message: string };
  }
  throw new Error('expected the request to fail');
}

t.test('keep_alive is read as Ollama reads it', async (t) => {
  const cases: [unknown, number | null | undefined][] = [[undefined, undefined], [0, 0], ['0', 0], [30, 30_000], ['30s', 30_000], ['5m', 300_000], ['1h30m', 5_400_000], ['1.5h', 5_400_000], ['250ms', 250], [-1, null], ['-1m', null], ['300', 300_000]];
  for (const [value, ms] of cases) t.equal(parseKeepAlive(value), ms, JSON.stringify(value));
  for (const bad of ['soon', '5 minutes', true, {}]) t.throws(() => parseKeepAlive(bad), JSON.stringify(bad));
});

t.test('root, HEAD and version answer as Ollama does', async (t) => {
  const root = await fetch(server.url);
  t.equal(root.status, 200);
  t.equal(await root.text(), 'Ollama is running');
  const head = await fetch(server.url, { method: 'HEAD' });
  t.equal(head.status, 200);
  const { version } = await ollama.version();
  t.match(version, /^\d+\.\d+\.\d+/);
});

t.test('list names the built-in model with its details', async (t) => {
  const { models } = await ollama.list();
  const tiny = models.find((m) => m.name === model);
  t.ok(tiny, 'tiny-qwen3 is listed');
  t.equal(tiny?.details.family, 'qwen3');
  t.equal(tiny?.details.format, 'safetensors');
  t.equal(tiny?.details.quantization_level, 'F32');
  t.ok((tiny?.size ?? 0) > 0);
  t.match(tiny?.digest, /^[0-9a-f]{64}$/);
});

t.test('generate: whole and streamed answers agree; durations in nanoseconds', async (t) => {
  const whole = await ollama.generate({ model, prompt: 'Why is the sky blue?', options: greedy });
  t.equal(whole.done, true);
  t.equal(whole.done_reason, 'length');
  t.equal(whole.eval_count, 12);
  t.ok(whole.prompt_eval_count > 5, 'the prompt went through the chat template');
  t.ok((whole.response ?? '').length > 0);
  for (const key of ['total_duration', 'prompt_eval_duration', 'eval_duration'] as const) t.ok(Number.isInteger(whole[key]) && whole[key] > 0, `${key} is a positive integer`);
  t.ok(whole.total_duration >= whole.eval_duration);
  const again = await ollama.generate({ model, prompt: 'Why is the sky blue?', options: greedy });
  t.equal(again.response, whole.response, 'greedy output is reproducible');
  t.equal(again.load_duration, 0, 'no load on the second request');

  const chunks: GenerateResponse[] = [];
  for await (const chunk of await ollama.generate({ model, prompt: 'Why is the sky blue?', options: greedy, stream: true })) chunks.push(chunk);
  const last = chunks.at(-1) as GenerateResponse;
  t.ok(chunks.length > 2, `${chunks.length} chunks`);
  t.ok(chunks.slice(0, -1).every((c) => !c.done), 'only the last chunk is done');
  t.equal(last.done_reason, 'length');
  t.equal(last.eval_count, 12);
  t.equal(chunks.map((c) => c.response).join(''), whole.response);
});

t.test('a request that sets no limit stops at the server default; an explicit one overrides it', async (t) => {
  const unset = await ollama.generate({ model, prompt: 'Why is the sky blue?', options: { temperature: 0 } });
  t.equal(unset.eval_count, DEFAULT_MAX_TOKENS, 'no num_predict: --default-max-tokens');
  t.equal(unset.done_reason, 'length');
  const zero = await ollama.generate({ model, prompt: 'Hi', options: { temperature: 0, num_predict: 0 } });
  t.equal(zero.eval_count, DEFAULT_MAX_TOKENS, 'num_predict 0 is unset, as in Ollama');
  const more = await ollama.generate({ model, prompt: 'Hi', options: greedy });
  t.equal(more.eval_count, 12, 'a limit above the default is honoured');
  const openai = await post(`${server.url}/v1/chat/completions`, { model, messages: [{ role: 'user', content: 'Hi' }], temperature: 0 });
  t.equal(openai.body.usage.completion_tokens, DEFAULT_MAX_TOKENS, 'no max_tokens: the same default');
  t.equal(openai.body.choices[0].finish_reason, 'length');

  // A prompt a few tokens short of the 4096-token context, so "until the context is full" is quick.
  const prompt = 'hello '.repeat(4070);
  const probe = await ollama.generate({ model, prompt, raw: true, options: { temperature: 0, num_predict: 1 } });
  const room = 4096 - probe.prompt_eval_count;
  t.ok(room > DEFAULT_MAX_TOKENS, `${room} tokens of room, more than the default`);
  for (const numPredict of [-1, -2]) {
    const full = await ollama.generate({ model, prompt, raw: true, options: { temperature: 0, num_predict: numPredict } });
    t.equal(full.eval_count, room, `num_predict ${numPredict}: until the context is full`);
    t.equal(full.done_reason, 'length');
  }
});

t.test('generate: system, raw, seed, stop and sampling options', async (t) => {
  const plain = await ollama.generate({ model, prompt: 'Hello', options: greedy });
  const withSystem = await ollama.generate({ model, prompt: 'Hello', system: 'You are terse.', options: greedy });
  t.ok(withSystem.prompt_eval_count > plain.prompt_eval_count, 'the system prompt is part of the prompt');
  const raw = await ollama.generate({ model, prompt: 'Hello', raw: true, options: greedy });
  t.equal(raw.prompt_eval_count, 1, 'raw: the prompt is not templated');
  const sampled = { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.2, num_predict: 12, num_ctx: 2048 };
  const s1 = await ollama.generate({ model, prompt: 'Hi', options: { ...sampled, seed: 7 } });
  const s2 = await ollama.generate({ model, prompt: 'Hi', options: { ...sampled, seed: 7 } });
  const s3 = await ollama.generate({ model, prompt: 'Hi', options: { ...sampled, seed: 8 } });
  t.equal(s1.response, s2.response, 'same seed, same text');
  t.not(s1.response, s3.response, 'another seed, another text');
  const reference = (await ollama.generate({ model, prompt: 'Once upon a time', options: { ...greedy, num_predict: 40 } })).response ?? '';
  const stop = reference.slice(Math.floor(reference.length / 2), Math.floor(reference.length / 2) + 5);
  const stopped = await ollama.generate({ model, prompt: 'Once upon a time', options: { ...greedy, num_predict: 40, stop: [stop] } });
  t.equal(stopped.response, reference.slice(0, reference.indexOf(stop)), `stops before '${stop}'`);
  t.equal(stopped.done_reason, 'stop');
  const ignored = await ollama.generate({ model, prompt: 'Hi', options: { ...greedy, num_thread: 2, num_gpu: 1, use_mmap: true, mirostat: 0 } });
  t.equal(ignored.done, true, "llama.cpp's runtime options are accepted");
});

t.test('chat: whole and streamed, tools and think:false reach the template', async (t) => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello in 日本語 🌸' }];
  const whole = await ollama.chat({ model, messages, options: greedy });
  t.equal(whole.message.role, 'assistant');
  t.equal(whole.done_reason, 'length');
  t.equal(whole.eval_count, 12);
  const chunks: ChatResponse[] = [];
  for await (const chunk of await ollama.chat({ model, messages, options: greedy, stream: true })) chunks.push(chunk);
  t.equal(chunks.map((c) => c.message.content).join(''), whole.message.content, 'stream and whole agree');
  t.ok(chunks.at(-1)?.done);
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const withTools = await ollama.chat({ model, messages, tools, options: greedy });
  t.ok(withTools.prompt_eval_count > whole.prompt_eval_count, 'tools are rendered into the prompt');
  const toolTurn = await ollama.chat({
    model,
    tools,
    options: greedy,
    messages: [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
      { role: 'tool', content: '18 degrees', tool_name: 'get_weather' },
    ],
  });
  t.equal(toolTurn.done, true, 'a tool call and its result are accepted');
  const noThinking = await ollama.chat({ model, messages, think: false, options: greedy });
  t.not(noThinking.prompt_eval_count, whole.prompt_eval_count, 'think:false changes the rendered prompt');
});

t.test('ps, keep_alive and load-only requests', async (t) => {
  await ollama.generate({ model, prompt: 'Hi', keep_alive: -1, options: greedy });
  let { models } = await ollama.ps();
  t.equal(models.length, 1);
  t.equal(models[0]?.name, model);
  t.ok((models[0]?.size ?? 0) > 0, 'size of the loaded model');
  t.ok(new Date(models[0]?.expires_at ?? 0).getFullYear() > 2200, 'keep_alive -1: kept loaded');
  await ollama.chat({ model, messages: [{ role: 'user', content: 'Hi' }], keep_alive: '5m', options: greedy });
  ({ models } = await ollama.ps());
  const inMinutes = (new Date(models[0]?.expires_at ?? 0).getTime() - Date.now()) / 60_000;
  t.ok(inMinutes > 4 && inMinutes <= 5, `keep_alive 5m: expires in ${inMinutes.toFixed(2)} minutes`);

  const done = await ollama.generate({ model, prompt: 'Hi', keep_alive: 0, options: greedy });
  t.equal(done.eval_count, 12, 'keep_alive 0 still answers');
  t.same((await ollama.ps()).models, [], 'keep_alive 0: unloaded after the request');

  const loaded = await ollama.generate({ model, prompt: '' });
  t.equal(loaded.done_reason, 'load');
  t.equal(loaded.response, '');
  t.equal((await ollama.ps()).models[0]?.name, model, 'an empty prompt loads the model');
  const unloaded = await ollama.generate({ model, prompt: '', keep_alive: 0 });
  t.equal(unloaded.done_reason, 'unload');
  t.same((await ollama.ps()).models, [], 'an empty prompt with keep_alive 0 unloads it');
  const chatLoad = await ollama.chat({ model, messages: [], keep_alive: '30s' });
  t.equal(chatLoad.done_reason, 'load', 'a chat without messages loads the model');
  t.equal(chatLoad.message.content, '');
  t.equal((await ollama.ps()).models.length, 1);
});

t.test('show describes the model', async (t) => {
  const shown = await ollama.show({ model });
  t.equal(shown.details.family, 'qwen3');
  const info = shown.model_info as unknown as Record<string, unknown>;
  t.equal(info['general.architecture'], 'qwen3');
  t.equal(info['qwen3.context_length'], 4096);
  // Every tensor of the built-in Qwen3 (vocabulary 151,936, hidden 128, 4 layers, 4 query and 2 key/value heads of 32, MLP 384, untied output head).
  const [vocab, hidden, layers, heads, kvHeads, headDim, mlp] = [151936, 128, 4, 4, 2, 32, 384];
  const perLayer = 2 * hidden + (heads + 2 * kvHeads) * headDim * hidden + hidden * heads * headDim + 2 * headDim + 3 * mlp * hidden;
  const expected = 2 * vocab * hidden + hidden + layers * perLayer;
  t.equal(info['general.parameter_count'], expected, 'parameters counted from the tensor shapes');
  t.equal(shown.details.parameter_size, '39.7M', "shown as Ollama shows a parameter count");
  const { models } = await ollama.list();
  t.equal(models.find((m) => m.name === model)?.details.parameter_size, '39.7M', 'the listing carries it too');
  const shapes: [number, string][] = [[950, '950'], [1000, '1.00K'], [12_345, '12.3K'], [494_032_768, '494M'], [8_030_261_248, '8.03B'], [70_553_706_496, '70.6B']];
  for (const [count, text] of shapes) t.equal(humanParameterCount(count), text, `${count} parameters read ${text}`);
  t.ok(shown.capabilities.includes('completion'));
  t.ok(shown.capabilities.includes('tools'), "Qwen3's template takes tools");
  t.match(shown.template, /im_start/, 'the chat template');
  t.match(shown.modelfile, /^# /);
  const latest = await ollama.show({ model: `${model}:latest` });
  t.equal(latest.details.family, 'qwen3', 'the :latest tag names the same model');
});

t.test("errors come in Ollama's shape", async (t) => {
  let error = await rejection(ollama.generate({ model: 'no-such-model', prompt: 'Hi' }));
  t.equal(error.status_code, 404);
  t.match(error.message, /model 'no-such-model' not found/);
  error = await rejection(ollama.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'Hi' }], stream: true }));
  t.equal(error.status_code, 404, 'a streamed request fails before the stream starts');
  error = await rejection(ollama.show({ model: 'no-such-model' }));
  t.equal(error.status_code, 404);
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['missing model', { prompt: 'Hi' }, /model is required/],
    ['format neither json nor a schema', { model, prompt: 'Hi', format: 'yaml' }, /format/],
    ['format schema with a keyword decoding cannot enforce', { model, prompt: 'Hi', format: { type: 'string', pattern: 'a+' } }, /'pattern' is not supported/],
    ['unknown option', { model, prompt: 'Hi', options: { warp_speed: 9 } }, /options\.warp_speed/],
    ['mirostat on', { model, prompt: 'Hi', options: { mirostat: 2 } }, /mirostat/],
    ['bad temperature', { model, prompt: 'Hi', options: { temperature: 'hot' } }, /temperature/],
    ['bad keep_alive', { model, prompt: 'Hi', keep_alive: 'soon' }, /keep_alive/],
    ['images', { model, prompt: 'Hi', images: ['aGVsbG8='] }, /images/],
    ['think', { model, prompt: 'Hi', think: true }, /think/],
    ['unknown field', { model, prompt: 'Hi', frobnicate: 1 }, /frobnicate/],
  ];
  for (const [name, body, message] of cases) {
    const r = await post(`${server.url}/api/generate`, body);
    t.equal(r.status, 400, name);
    t.same(Object.keys(r.body), ['error'], `${name}: {error} only`);
    t.match(r.body.error, message, name);
  }
  const bad = await post(`${server.url}/api/chat`, { model, messages: [{ role: 'wizard', content: 'x' }] });
  t.equal(bad.status, 400, 'bad role');
  const notJson = await post(`${server.url}/api/chat`, '{"model": ');
  t.equal(notJson.status, 400);
  t.type(notJson.body.error, 'string');
  const wrongMethod = await json(`${server.url}/api/generate`);
  t.equal(wrongMethod.status, 405);
});

t.test('the openai client works on the same server', async (t) => {
  const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
  const models = await openai.models.list();
  t.ok(models.data.some((m) => m.id === model));
  const completion = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0 });
  t.equal(completion.choices[0]?.finish_reason, 'length');
  t.equal(completion.usage?.completion_tokens, 8);
  const stream = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0, stream: true });
  const parts: string[] = [];
  for await (const chunk of stream) parts.push(chunk.choices[0]?.delta.content ?? '');
  t.equal(parts.join(''), completion.choices[0]?.message.content, 'streamed and whole agree');
  const error = await rejection(openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 }));
  t.equal((error as { status?: number }).status, 404);
});
