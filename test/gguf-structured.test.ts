/**
 * Structured output and forced tool calls on a GGUF model, through llama.cpp's grammars: the
 * built-in model's random weights, as an F32 GGUF, give valid JSON that matches the client's
 * schema, and a tool call in its family's markers, only because every token that would break
 * them is masked. Checked with a real JSON Schema validator through the
 * official `openai` and `ollama` clients, whole and streamed.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { Ollama } from 'ollama';
import OpenAI from 'openai';
import t, { type Test } from 'tap';
import { builtinModelGguf, post, startServer, tempDir } from './helpers/server.ts';

const model = 'tiny-qwen3-f32';
const modelsDir = tempDir('gguf-structured-');
builtinModelGguf(join(modelsDir, `${model}.gguf`));
const server = await startServer(['--models-dir', modelsDir, '--idle-timeout', '0'], { MLX_SERVER_LLAMA_THREADS: '1' });
t.teardown(async () => {
  await server.stop();
  rmSync(modelsDir, { recursive: true, force: true });
});
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const ollama = new Ollama({ host: server.url });
const ajv = new Ajv({ strict: true });

/** An enum, an integer, a number, a boolean and a nested object, every property required. */
const ORDER = {
  type: 'object',
  properties: {
    size: { enum: ['small', 'large'] },
    quantity: { type: 'integer' },
    discount: { type: 'number' },
    gift: { type: 'boolean' },
    shipping: { type: 'object', properties: { express: { type: 'boolean' }, days: { enum: [1, 2, 3] } }, required: ['express', 'days'], additionalProperties: false },
  },
  required: ['size', 'quantity', 'discount', 'gift', 'shipping'],
  additionalProperties: false,
};
const validOrder = ajv.compile(ORDER);
const messages = [{ role: 'user' as const, content: 'Place an order.' }];
const BUDGET = 200;

function validates(t: Test, text: string, label: string): void {
  let value: unknown;
  t.doesNotThrow(() => (value = JSON.parse(text)), `${label}: the output is JSON`);
  t.ok(validOrder(value), `${label}: it matches the schema ${JSON.stringify(validOrder.errors ?? [])}: ${text}`);
  t.ok(Number.isFinite((value as { discount?: number } | undefined)?.discount), `${label}: the number is finite`);
}

t.test('OpenAI response_format json_schema: output validates, whole and streamed', async (t) => {
  const format = { type: 'json_schema' as const, json_schema: { name: 'order', schema: ORDER, strict: true } };
  const reply = await openai.chat.completions.create({ model, messages, response_format: format, max_tokens: BUDGET, seed: 1 });
  t.equal(reply.choices[0]?.finish_reason, 'stop', 'the JSON closed and the model stopped');
  validates(t, reply.choices[0]?.message.content ?? '', 'whole');
  const stream = await openai.chat.completions.create({ model, messages, response_format: format, max_tokens: BUDGET, seed: 2, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
  validates(t, text, 'streamed');
});

t.test('Ollama format: <schema>, chat and generate', async (t) => {
  const chat = await ollama.chat({ model, messages, format: ORDER, options: { seed: 3, num_predict: BUDGET } });
  t.equal(chat.done_reason, 'stop');
  validates(t, chat.message.content, 'chat');
  const generated = await ollama.generate({ model, prompt: 'Place an order.', format: ORDER, options: { seed: 4, num_predict: BUDGET } });
  validates(t, generated.response ?? '', 'generate');
});

t.test('without a format the same request is not JSON: the grammar is what makes it so', async (t) => {
  const reply = await openai.chat.completions.create({ model, messages, max_tokens: 24, seed: 1 });
  t.throws(() => JSON.parse(reply.choices[0]?.message.content ?? ''), 'random weights write noise');
});

t.test('a schema keyword the grammar cannot honour is refused with a 400 that names it', async (t) => {
  const bounded = { ...ORDER, properties: { ...ORDER.properties, quantity: { type: 'integer', minimum: 1 } } };
  const r = await post(`${server.url}/v1/chat/completions`, { model, messages, response_format: { type: 'json_schema', json_schema: { name: 'order', schema: bounded } }, max_tokens: 8 });
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'unsupported');
  t.match(r.body.error.message, /cannot honour the schema keyword 'minimum' at \/properties\/quantity/);
});

/** A second tool whose schema, like ORDER's, gives node-llama-cpp's rules the names `rule0` and `val0`. */
const TRACK = {
  type: 'object',
  properties: { carrier: { enum: ['post', 'courier'] }, parcel: { type: 'integer' }, signed: { type: 'boolean' } },
  required: ['carrier', 'parcel', 'signed'],
  additionalProperties: false,
};
const validTrack = ajv.compile(TRACK);
const TOOLS = [
  { type: 'function' as const, function: { name: 'order', description: 'Place an order', parameters: ORDER } },
  { type: 'function' as const, function: { name: 'track', description: 'Track a parcel', parameters: TRACK } },
];
const NAMED = { type: 'function' as const, function: { name: 'track' } };

/** A call's arguments validate against the schema of the tool it names. */
function validCall(t: Test, name: string | undefined, args: unknown, label: string): void {
  const validate = name === 'order' ? validOrder : name === 'track' ? validTrack : null;
  t.ok(validate, `${label}: one of the offered tools (${String(name)})`);
  t.ok(validate?.(args), `${label}: the arguments match ${String(name)}'s schema ${JSON.stringify(validate?.errors ?? [])}: ${JSON.stringify(args)}`);
}

t.test('OpenAI tool_choice "required" and a named tool: a call whose arguments validate, whole and streamed', async (t) => {
  const reply = await openai.chat.completions.create({ model, messages, tools: TOOLS, tool_choice: 'required', max_tokens: BUDGET, seed: 5 });
  const choice = reply.choices[0];
  t.equal(choice?.finish_reason, 'tool_calls');
  t.equal(choice?.message.content, null, 'no text beside the call');
  t.equal(choice?.message.tool_calls?.length, 1);
  const fn = choice?.message.tool_calls?.[0]?.type === 'function' ? choice.message.tool_calls[0].function : undefined;
  validCall(t, fn?.name, JSON.parse(fn?.arguments ?? 'null'), 'required');

  const stream = await openai.chat.completions.create({ model, messages, tools: TOOLS, tool_choice: NAMED, max_tokens: BUDGET, seed: 6, stream: true });
  let name = '';
  let args = '';
  let content = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta;
    content += delta?.content ?? '';
    for (const part of delta?.tool_calls ?? []) {
      name += part.function?.name ?? '';
      args += part.function?.arguments ?? '';
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.equal(finish, 'tool_calls');
  t.equal(content, '', 'the call markup is not streamed as content');
  t.equal(name, 'track', 'the named tool');
  validCall(t, name, JSON.parse(args), 'named, streamed');
});

t.test('Ollama chat with tool_choice: message.tool_calls whose arguments validate', async (t) => {
  // tool_choice is this server's addition to Ollama's chat: without it a random model never calls.
  const request = { model, messages, tools: TOOLS, options: { seed: 7, num_predict: BUDGET } };
  const required = await ollama.chat({ ...request, tool_choice: 'required' } as typeof request);
  t.equal(required.message.tool_calls?.length, 1);
  validCall(t, required.message.tool_calls?.[0]?.function.name, required.message.tool_calls?.[0]?.function.arguments, 'required');
  t.equal(required.message.content, '', 'no text beside the call');
  const named = await ollama.chat({ ...request, tool_choice: NAMED } as typeof request);
  t.equal(named.message.tool_calls?.[0]?.function.name, 'track');
  validCall(t, 'track', named.message.tool_calls?.[0]?.function.arguments, 'named');
});

t.test('a required call to a tool whose schema the grammar cannot honour is refused with a 400 that names it', async (t) => {
  const tools = [{ type: 'function', function: { name: 'track', parameters: { ...TRACK, properties: { ...TRACK.properties, parcel: { type: 'integer', minimum: 1 } } } } }];
  const r = await post(`${server.url}/v1/chat/completions`, { model, messages, tools, tool_choice: 'required', max_tokens: 8 });
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'unsupported');
  t.match(r.body.error.message, /cannot honour the schema keyword 'minimum' at \/properties\/parcel/);
});
