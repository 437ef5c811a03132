/**
 * A GGUF model served by llama.cpp behind the same server: listed with what its header says,
 * answering both APIs whole and streamed, giving the same greedy text as the same weights
 * served as safetensors through MLX, stopping at stop strings, cancelled when its client
 * leaves, and unloaded and loaded again like any model.
 */
import { readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import t from 'tap';
import { kvBudget } from '../src/models/footprint.ts';
import { builtinModelGguf, forwardPassCounters, json, logEvents, post, serverStatus, sleep, startServer, tempDir, TEST_CACHE_DIR } from './helpers/server.ts';

const BUILTIN = 'tiny-qwen3';
const GGUF = 'tiny-qwen3-f32';
/** The same weights as three files, as llama.cpp's gguf-split writes a model too large for one. */
const SPLIT = 'tiny-qwen3-f32-split';
const modelsDir = tempDir('gguf-models-');
builtinModelGguf(join(modelsDir, `${GGUF}.gguf`));
const splitParts = builtinModelGguf(join(modelsDir, `${SPLIT}.gguf`), { type: 'F32', parts: 3 });

// One llama.cpp thread: on a shared machine its spinning threads slow each other down.
const server = await startServer(['--models-dir', modelsDir], { MLX_SERVER_LLAMA_THREADS: '1' });
t.teardown(async () => {
  await server.stop();
  rmSync(modelsDir, { recursive: true, force: true });
});
const { url } = server;

const greedy = { temperature: 0, max_tokens: 24, ignore_eos: true };
const complete = (model: string, extra: Record<string, unknown> = {}) => post(`${url}/v1/completions`, { model, prompt: 'The quick brown fox', ...greedy, ...extra });
const chat = (model: string) => post(`${url}/v1/chat/completions`, { model, messages: [{ role: 'user', content: 'Hello there, who are you?' }], ...greedy });

/** The text of an SSE (OpenAI) or NDJSON (Ollama) stream, joined from its chunks. */
async function streamed(path: string, body: Record<string, unknown>, pick: (chunk: Record<string, any>) => string | undefined): Promise<string> {
  const response = await fetch(`${url}${path}`, { method: 'POST', body: JSON.stringify(body) });
  const raw = await response.text();
  return raw
    .split('\n')
    .map((line) => line.replace(/^data: /, '').trim())
    .filter((line) => line.startsWith('{'))
    .map((line) => pick(JSON.parse(line) as Record<string, any>) ?? '')
    .join('');
}

t.test('listings show a GGUF file by its stem, with format, quantization, architecture and context length', async (t) => {
  const tags = await json<{ models: { name: string; details: Record<string, unknown> }[] }>(`${url}/api/tags`);
  const gguf = tags.body.models.find((m) => m.name === GGUF);
  t.match(gguf?.details, { format: 'gguf', family: 'qwen3', quantization_level: 'F32', parameter_size: /^\d+(\.\d+)?[KMBT]?$/ });
  t.match(tags.body.models.find((m) => m.name === BUILTIN)?.details, { format: 'safetensors' });
  const show = await post(`${url}/api/show`, { model: GGUF });
  t.equal(show.status, 200);
  t.equal(show.body.model_info['qwen3.context_length'], 4096);
  t.equal(show.body.model_info['general.architecture'], 'qwen3');
  t.match(show.body.template, /im_start/, 'the chat template embedded in the GGUF');
  const models = await json<{ data: Record<string, unknown>[] }>(`${url}/v1/models`);
  t.match(
    models.body.data.find((m) => m.id === GGUF),
    { format: 'gguf', architecture: 'qwen3', quantization: 'F32', context_length: 4096 },
  );
});

t.test('a split GGUF model is listed once, by the name its parts share, with the size of all of them', async (t) => {
  t.same(splitParts.map((path) => basename(path)), [1, 2, 3].map((part) => `${SPLIT}-0000${part}-of-00003.gguf`), 'parts named as llama.cpp names them');
  const tags = await json<{ models: { name: string; size: number; details: Record<string, unknown> }[] }>(`${url}/api/tags`);
  t.same(tags.body.models.filter((m) => m.name.startsWith(SPLIT)).map((m) => m.name), [SPLIT], 'one model, not one per part');
  const split = tags.body.models.find((m) => m.name === SPLIT);
  t.equal(split?.size, splitParts.reduce((sum, path) => sum + statSync(path).size, 0), 'its size is its parts together');
  t.match(split?.details, { format: 'gguf', family: 'qwen3', quantization_level: 'F32' });
  const whole = (await post(`${url}/api/show`, { model: GGUF })).body;
  const parts = (await post(`${url}/api/show`, { model: SPLIT })).body;
  t.equal(parts.details.parameter_size, whole.details.parameter_size, 'the parameters of every part are counted');
});

t.test('with a part missing, a split model is not offered, nor any part as a model of its own', async (t) => {
  const listed = async (): Promise<string[]> => {
    await sleep(1000); // the models dir's watch refreshes the index once its events settle
    return (await json<{ data: { id: string }[] }>(`${url}/v1/models`)).body.data.map((m) => m.id).filter((id) => id.startsWith(SPLIT));
  };
  const last = splitParts[2] as string;
  renameSync(last, `${last}.aside`);
  try {
    t.same(await listed(), [], 'nothing listed while a part is missing');
  } finally {
    renameSync(`${last}.aside`, last);
  }
  t.same(await listed(), [SPLIT], 'listed again once the part is back');
});

let ggufText = '';

t.test('the same weights give the same greedy text through MLX (safetensors) and llama.cpp (F32 GGUF)', async (t) => {
  const mlx = await complete(BUILTIN);
  const llama = await complete(GGUF);
  t.equal(llama.status, 200);
  t.equal(llama.body.model, GGUF);
  ggufText = llama.body.choices[0].text as string;
  t.ok(ggufText.length > 0, 'text was generated');
  t.equal(ggufText, mlx.body.choices[0].text, 'completion text');
  t.same(llama.body.usage, mlx.body.usage, 'usage counts');
  const mlxChat = await chat(BUILTIN);
  const llamaChat = await chat(GGUF);
  t.equal(llamaChat.body.choices[0].message.content, mlxChat.body.choices[0].message.content, 'chat text, through each engine’s rendering of the template');
  t.equal(llamaChat.body.usage.prompt_tokens, mlxChat.body.usage.prompt_tokens, 'the chat prompt tokenizes to as many tokens');
  const split = await complete(SPLIT);
  t.equal(split.status, 200, 'llama.cpp loads a split model from its first part');
  t.equal(split.body.choices[0].text, ggufText, 'the split model gives the same text as the single file');
});

t.test('both APIs, streamed and whole, give the same text', async (t) => {
  const body = { model: GGUF, prompt: 'The quick brown fox', ...greedy, stream: true };
  t.equal(await streamed('/v1/completions', body, (c) => c.choices?.[0]?.text), ggufText, 'OpenAI streamed');
  const ollamaOptions = { temperature: 0, num_predict: 24, repeat_penalty: 1, top_k: 0, top_p: 1 };
  const whole = await post(`${url}/api/generate`, { model: GGUF, prompt: 'The quick brown fox', raw: true, stream: false, options: ollamaOptions });
  t.equal(whole.status, 200);
  t.equal(whole.body.eval_count, 24);
  const stream = await streamed('/api/generate', { model: GGUF, prompt: 'The quick brown fox', raw: true, options: ollamaOptions }, (c) => c.response);
  t.equal(stream, whole.body.response, 'Ollama streamed and whole');
  const chatBody = { model: GGUF, messages: [{ role: 'user', content: 'Hi' }], options: ollamaOptions };
  const chatWhole = await post(`${url}/api/chat`, { ...chatBody, stream: false });
  t.equal(chatWhole.status, 200);
  t.equal(await streamed('/api/chat', chatBody, (c) => c.message?.content), chatWhole.body.message.content, 'Ollama chat streamed and whole');
});

t.test('concurrent requests decode together in llama.cpp batches, each continuing its own prompt', async (t) => {
  const prompts = ['The quick brown fox', 'Once upon a time', 'In a galaxy far away', 'Hello there, who are you?'];
  const alone: string[] = [];
  for (const prompt of prompts) alone.push((await complete(GGUF, { prompt })).body.choices[0].text);
  const before = await forwardPassCounters(url);
  const together = await Promise.all(prompts.map((prompt) => complete(GGUF, { prompt })));
  // llama.cpp does not promise the same logits for a row alone and in a batch of four (its
  // kernels accumulate in another order), and this random model's near ties then flip after a
  // few tokens (CI: 5-20 characters in). What must hold: each row continues its own prompt as it
  // did alone, and runs to its length.
  together.forEach((r, i) => {
    t.equal(r.body.usage.completion_tokens, greedy.max_tokens, `row ${i}: ${greedy.max_tokens} tokens`);
    t.equal((r.body.choices[0].text as string).slice(0, 4), alone[i]?.slice(0, 4), `row ${i} begins as it did alone`);
  });
  const after = await forwardPassCounters(url);
  const passes = after.passes - before.passes;
  const sequences = after.sequences - before.sequences;
  t.equal(after.generated - before.generated, prompts.length * greedy.max_tokens);
  // Four rows in step: about one pass per token of a row, each carrying the four.
  t.ok(sequences / passes > 3.5, `${(sequences / passes).toFixed(2)} sequences per forward pass over ${passes} passes`);
});

t.test('sampling fields mean through llama.cpp what they mean for MLX models', async (t) => {
  const sampled = async (extra: Record<string, unknown>): Promise<string> => {
    const r = await complete(GGUF, { temperature: 1, ...extra });
    t.equal(r.status, 200, JSON.stringify(extra));
    return r.body.choices[0].text as string;
  };
  const seeded = await sampled({ seed: 7 });
  t.equal(await sampled({ seed: 7 }), seeded, 'the same seed gives the same text');
  t.not(await sampled({ seed: 8 }), seeded, 'another seed another text');
  t.not(seeded, ggufText, 'sampling at temperature 1 is not greedy');
  t.equal(await sampled({ seed: 8, top_k: 1 }), ggufText, 'top_k 1 keeps only the greedy token');
  t.equal(await sampled({ seed: 8, min_p: 1 }), ggufText, 'min_p 1 keeps only the most likely token');
  const penalised = await complete(GGUF, { repetition_penalty: 1.5 });
  t.not(penalised.body.choices[0].text, ggufText, 'a repetition penalty changes the greedy text');
});

t.test('a stop string ends the text before it', async (t) => {
  const stop = ggufText.slice(8, 12);
  const r = await complete(GGUF, { stop: [stop] });
  t.equal(r.body.choices[0].finish_reason, 'stop');
  t.equal(r.body.choices[0].text, ggufText.slice(0, ggufText.indexOf(stop)));
});

t.test('a client that disconnects mid-stream is cancelled', async (t) => {
  const controller = new AbortController();
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ model: GGUF, prompt: 'stream me', max_tokens: 2000, ignore_eos: true, stream: true }),
    signal: controller.signal,
  });
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let received = 0;
  while (received < 3) received += new TextDecoder().decode((await reader.read()).value).split('data: ').length - 1;
  controller.abort();
  let cancelled: Record<string, unknown> | undefined;
  for (let i = 0; i < 400 && !cancelled; i++) {
    cancelled = logEvents(server, 'cancelled')[0];
    await sleep(50);
  }
  t.equal(cancelled?.reason, 'client');
  t.ok((cancelled?.tokensAfterCancel as number) <= 2, `${String(cancelled?.tokensAfterCancel)} tokens generated after the disconnect`);
  const after = await complete(GGUF);
  t.equal(after.body.choices[0].text, ggufText, 'the next request is served in full');
});

t.test('unload frees the model; the next request loads it again', async (t) => {
  const unloaded = await post(`${url}/admin/unload`, {});
  t.equal(unloaded.status, 200);
  t.equal(unloaded.body.status, 'success');
  t.ok(unloaded.body.memory_freed_gb > 0, `freed ${unloaded.body.memory_freed_gb} GB`);
  const again = await complete(GGUF);
  t.equal(again.body.choices[0].text, ggufText);
});

t.test('the KV budget of a GGUF model is sized from its header: fp16 keys and values per layer and KV head', async (t) => {
  const config = JSON.parse(readFileSync(join(TEST_CACHE_DIR, BUILTIN, 'config.json'), 'utf8')) as Record<string, number>;
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  const memory = { reserveBytes: 0, limitBytes: 0, promptCacheBytes: 0, prefillChunk: 256 };
  const budget = kvBudget(join(modelsDir, `${GGUF}.gguf`), 'native', 8 * 2 ** 30, memory);
  t.equal(budget.bytesPerToken, config.num_hidden_layers * 2 * config.num_key_value_heads * headDim * 2);
  t.ok(budget.modelBytes > 0 && budget.budgetBytes < 8 * 2 ** 30, 'the weights and activations come out of the budget');
});

t.test('status and the load log state the context and sequences llama.cpp was given; the KV budget is what it allocated', async (t) => {
  t.equal((await post(`${url}/admin/load`, { model: GGUF })).status, 200);
  const status = await serverStatus(url);
  const kv = status.kv_cache;
  if (!kv) return t.fail('the status reports a KV budget after the load');
  const loaded = logEvents(server, 'loaded').filter((event) => event.model === GGUF).at(-1);
  t.equal(loaded?.contextLength, status.model.context_length, 'the log states the context per sequence');
  t.equal(loaded?.sequences, kv.max_running, 'the log states the sequences');
  // This machine has memory for the whole trained context of every --max-batch (16) sequence.
  t.equal(status.model.context_length, 4096);
  t.equal(kv.max_running, 16);
  t.equal(kv.budget_bytes, 4096 * 16 * kv.bytes_per_token, 'the budget is the cells llama.cpp allocated');
});

t.test('--gguf-context sets the context llama.cpp gives each sequence; a longer prompt is refused with the numbers; listings keep the trained context', async (t) => {
  const capped = await startServer(['--models-dir', modelsDir, '--gguf-context', '512'], { MLX_SERVER_LLAMA_THREADS: '1' });
  t.teardown(() => capped.stop());
  t.equal((await post(`${capped.url}/admin/load`, { model: GGUF })).status, 200);
  const status = await serverStatus(capped.url);
  t.equal(status.model.context_length, 512, 'status: the loaded context per sequence');
  t.equal(status.kv_cache?.max_running, 16, 'every --max-batch sequence');
  t.equal(status.kv_cache?.budget_bytes, 512 * 16 * (status.kv_cache?.bytes_per_token ?? 0), 'the budget is the cells llama.cpp allocated');
  t.equal(status.config.gguf_context, 512);
  const long = await post(`${capped.url}/v1/completions`, { model: GGUF, prompt: 'hello '.repeat(600), max_tokens: 1 });
  t.equal(long.status, 400);
  t.match(long.body.error.message, /maximum context length is 512 tokens, but the request needs \d+ \(\d+ in the prompt, 1 to generate\)/);
  t.ok(Number(/\((\d+) in the prompt/.exec(long.body.error.message as string)?.[1]) >= 600, 'the prompt is over the context');
  // --default-max-tokens (2048) is more than the context: a request without a limit stops when the context is full.
  const unlimited = await post(`${capped.url}/v1/completions`, { model: GGUF, prompt: 'hello '.repeat(500), temperature: 0, ignore_eos: true });
  t.equal(unlimited.status, 200, 'a request without a limit is served');
  t.equal(unlimited.body.choices?.[0].finish_reason, 'length');
  t.equal(unlimited.body.usage?.total_tokens, 512, 'until the context is full');
  const short = await post(`${capped.url}/v1/completions`, { model: GGUF, prompt: 'The quick brown fox', ...greedy });
  t.equal(short.body.choices[0].text, ggufText, 'a prompt that fits is served as with the whole context');
  const models = await json<{ data: Record<string, unknown>[] }>(`${capped.url}/v1/models`);
  t.equal(models.body.data.find((m) => m.id === GGUF)?.context_length, 4096, '/v1/models: the trained context');
  t.equal((await post(`${capped.url}/api/show`, { model: GGUF })).body.model_info['qwen3.context_length'], 4096, '/api/show: the trained context');
});
