/**
 * Structured output and forced tool calls on the built-in model, whose weights are random: only
 * constrained decoding (masking every token that would break the format before each draw) can
 * make its output valid JSON that matches the client's schema. Checked with a real JSON Schema
 * validator, through the official `openai` and `ollama` clients, whole and streamed.
 */
import { Ajv } from 'ajv';
import { Ollama } from 'ollama';
import OpenAI from 'openai';
import t, { type Test } from 'tap';
import { post, startServer } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0', '--max-batch', '4']);
t.teardown(() => server.stop());
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const ollama = new Ollama({ host: server.url });
const model = 'tiny-qwen3';
const ajv = new Ajv({ strict: true });

/** Nested objects, an array, enums, numbers, integers and booleans, every property required. */
const PRODUCT = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    size: { enum: ['small', 'medium', 'large'] },
    price: { type: 'number', minimum: 0, maximum: 1000 },
    stock: {
      type: 'object',
      properties: { count: { type: 'integer', minimum: 0, maximum: 99 }, warehouse: { type: 'object', properties: { city: { type: 'string' }, open: { type: 'boolean' } }, required: ['city', 'open'], additionalProperties: false } },
      required: ['count', 'warehouse'],
      additionalProperties: false,
    },
    colours: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, maxItems: 3 },
  },
  required: ['name', 'size', 'price', 'stock', 'colours'],
  additionalProperties: false,
};
const validProduct = ajv.compile(PRODUCT);

const WEATHER = {
  type: 'object',
  properties: { city: { type: 'string' }, unit: { enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
const validWeather = ajv.compile(WEATHER);
const TOOLS = [
  { type: 'function' as const, function: { name: 'get_weather', description: 'Weather in a city', parameters: WEATHER } },
  { type: 'function' as const, function: { name: 'get_time', description: 'Time in a zone', parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'], additionalProperties: false } } },
];
const messages = [{ role: 'user' as const, content: 'Describe a product.' }];
/** Room for the JSON to close: the test asserts finish_reason "stop", so a cut-off answer fails it. */
const BUDGET = 200;

function validates(t: Test, validate: ReturnType<typeof ajv.compile>, text: string, label: string): void {
  let value: unknown;
  t.doesNotThrow(() => (value = JSON.parse(text)), `${label}: the output is JSON`);
  t.ok(validate(value), `${label}: it matches the schema ${JSON.stringify(validate.errors ?? [])}: ${text}`);
}

t.test('OpenAI response_format json_schema (strict): output validates, whole and streamed', async (t) => {
  const format = { type: 'json_schema' as const, json_schema: { name: 'product', schema: PRODUCT, strict: true } };
  const reply = await openai.chat.completions.create({ model, messages, response_format: format, max_tokens: BUDGET, seed: 1 });
  t.equal(reply.choices[0]?.finish_reason, 'stop', 'the JSON closed and the model stopped');
  validates(t, validProduct, reply.choices[0]?.message.content ?? '', 'whole');
  const stream = await openai.chat.completions.create({ model, messages, response_format: format, max_tokens: BUDGET, seed: 3, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.equal(finish, 'stop');
  validates(t, validProduct, text, 'streamed');
});

t.test('OpenAI json_object and Ollama format "json" give a JSON object', async (t) => {
  const reply = await openai.chat.completions.create({ model, messages, response_format: { type: 'json_object' }, max_tokens: BUDGET, seed: 4 });
  const value = JSON.parse(reply.choices[0]?.message.content ?? '') as unknown;
  t.ok(typeof value === 'object' && value !== null && !Array.isArray(value), 'an object');
  const generated = await ollama.generate({ model, prompt: 'Describe a product.', format: 'json', options: { seed: 4, num_predict: BUDGET } });
  const fromOllama = JSON.parse(generated.response ?? '') as unknown;
  t.ok(typeof fromOllama === 'object' && fromOllama !== null && !Array.isArray(fromOllama), 'an object from /api/generate');
});

t.test('Ollama format: <schema> validates, whole and streamed, chat and generate', async (t) => {
  const chat = await ollama.chat({ model, messages, format: PRODUCT, options: { seed: 5, num_predict: BUDGET } });
  t.equal(chat.done_reason, 'stop');
  validates(t, validProduct, chat.message.content, 'chat');
  let streamed = '';
  for await (const part of await ollama.chat({ model, messages, format: PRODUCT, stream: true, options: { seed: 6, num_predict: BUDGET } })) streamed += part.message.content;
  validates(t, validProduct, streamed, 'streamed chat');
  const generated = await ollama.generate({ model, prompt: 'Describe a product.', format: PRODUCT, options: { seed: 7, num_predict: BUDGET } });
  validates(t, validProduct, generated.response ?? '', 'generate');
});

t.test('each row of a batch keeps to its own format', async (t) => {
  const asks = [
    openai.chat.completions.create({ model, messages, response_format: { type: 'json_schema', json_schema: { name: 'product', schema: PRODUCT } }, max_tokens: BUDGET, seed: 8 }),
    openai.chat.completions.create({ model, messages, response_format: { type: 'json_schema', json_schema: { name: 'weather', schema: WEATHER } }, max_tokens: BUDGET, seed: 9 }),
    openai.chat.completions.create({ model, messages, max_tokens: 30, seed: 10 }),
  ];
  const [product, weather, free] = await Promise.all(asks);
  validates(t, validProduct, product?.choices[0]?.message.content ?? '', 'product row');
  validates(t, validWeather, weather?.choices[0]?.message.content ?? '', 'weather row');
  t.throws(() => JSON.parse(free?.choices[0]?.message.content ?? ''), 'the unconstrained row beside them stays free text');
});

t.test('max_tokens reached inside the object: finish_reason length and the JSON is cut off', async (t) => {
  const reply = await openai.chat.completions.create({ model, messages, response_format: { type: 'json_schema', json_schema: { name: 'product', schema: PRODUCT } }, max_tokens: 5, seed: 1 });
  t.equal(reply.choices[0]?.finish_reason, 'length');
  const text = reply.choices[0]?.message.content ?? '';
  t.ok(text.startsWith('{"name":'), `the answer is the start of the object: ${text}`);
  t.throws(() => JSON.parse(text), 'and not yet whole JSON');
});

t.test('tool_choice "required": the call validates against the tool schema', async (t) => {
  const reply = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: TOOLS, tool_choice: 'required', max_tokens: BUDGET, seed: 11 });
  const choice = reply.choices[0];
  t.equal(choice?.finish_reason, 'tool_calls');
  t.equal(choice?.message.content, null, 'no text beside the call');
  const call = choice?.message.tool_calls?.[0];
  t.equal(call?.type, 'function');
  t.match(call?.id, /^call_/);
  const fn = call?.type === 'function' ? call.function : undefined;
  t.ok(fn && ['get_weather', 'get_time'].includes(fn.name), 'one of the offered tools');
  if (fn?.name === 'get_weather') validates(t, validWeather, fn.arguments, 'get_weather arguments');
  else t.ok(typeof (JSON.parse(fn?.arguments ?? 'null') as { zone?: unknown }).zone === 'string', 'get_time arguments');
});

t.test('a named tool_choice forces that tool; streamed as delta.tool_calls', async (t) => {
  const stream = await openai.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'Weather?' }],
    tools: TOOLS,
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
    max_tokens: BUDGET,
    seed: 12,
    stream: true,
  });
  const calls = new Map<number, { id?: string; name: string; arguments: string }>();
  let finish: string | null = null;
  let content = '';
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta;
    content += delta?.content ?? '';
    for (const part of delta?.tool_calls ?? []) {
      const call = calls.get(part.index) ?? { name: '', arguments: '' };
      if (part.id) call.id = part.id;
      call.name += part.function?.name ?? '';
      call.arguments += part.function?.arguments ?? '';
      calls.set(part.index, call);
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.equal(finish, 'tool_calls');
  t.equal(content, '', 'the call markup is not streamed as content');
  t.equal(calls.size, 1);
  t.equal(calls.get(0)?.name, 'get_weather');
  validates(t, validWeather, calls.get(0)?.arguments ?? '', 'streamed arguments');
});

t.test('the ollama client reads message.tool_calls, whole and streamed', async (t) => {
  // tool_choice is this server's addition to Ollama's chat: without it a random model never calls.
  const request = { model, messages: [{ role: 'user' as const, content: 'Weather?' }], tools: TOOLS, options: { seed: 13, num_predict: BUDGET } };
  const whole = await ollama.chat({ ...request, tool_choice: 'required' } as typeof request);
  const call = whole.message.tool_calls?.[0];
  t.ok(call, 'a call');
  if (call?.function.name === 'get_weather') t.ok(validWeather(call.function.arguments), `arguments arrive as an object that validates: ${JSON.stringify(call.function.arguments)}`);
  else t.equal(call?.function.name, 'get_time');
  t.equal(whole.message.content, '', 'no text beside the call');
  const calls = [];
  const named = { ...request, tool_choice: { type: 'function', function: { name: 'get_weather' } }, stream: true as const };
  for await (const part of await ollama.chat(named)) {
    calls.push(...(part.message.tool_calls ?? []));
  }
  t.equal(calls.length, 1);
  t.equal(calls[0]?.function.name, 'get_weather');
  t.ok(validWeather(calls[0]?.function.arguments), 'streamed arguments validate');
});

t.test('tool_choice "none" and "auto" on free text: no calls, finish_reason stop or length', async (t) => {
  for (const tool_choice of ['none', 'auto'] as const) {
    const reply = await openai.chat.completions.create({ model, messages, tools: TOOLS, tool_choice, max_tokens: 8, seed: 14 });
    t.notOk(reply.choices[0]?.message.tool_calls, `${tool_choice}: no calls`);
    t.ok(['stop', 'length'].includes(reply.choices[0]?.finish_reason ?? ''), tool_choice);
  }
});

t.test('schemas and tool choices the server cannot enforce are refused with a 400', async (t) => {
  const cases: [string, string, Record<string, unknown>, RegExp][] = [
    ['pattern', '/v1/chat/completions', { model, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', pattern: 'a+' } } } }, /'pattern' is not supported/],
    ['format in a nested property', '/v1/chat/completions', { model, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { at: { type: 'string', format: 'date-time' } } } } } }, /properties\.at: schema keyword 'format'/],
    ['unknown response_format type', '/v1/chat/completions', { model, messages, response_format: { type: 'yaml' } }, /response_format/],
    ['a tool schema with oneOf, when a call is required', '/v1/chat/completions', { model, messages, tools: [{ type: 'function', function: { name: 'f', parameters: { oneOf: [{ type: 'string' }] } } }], tool_choice: 'required' }, /'oneOf' is not supported/],
    ['a named tool that was not offered', '/v1/chat/completions', { model, messages, tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }, /not among the tools/],
    ['Ollama format with $ref outside the schema', '/api/chat', { model, messages, format: { $ref: 'https://example.com/schema.json' } }, /\$ref/],
    ['a $ref to nothing', '/api/chat', { model, messages, format: { type: 'object', properties: { a: { $ref: '#/$defs/missing' } } } }, /points at no schema/],
    ['minItems above maxItems', '/api/chat', { model, messages, format: { type: 'array', minItems: 5, maxItems: 2 } }, /minItems 5 is greater than maxItems 2/],
  ];
  for (const [name, path, body, message] of cases) {
    const reply = await post(server.url + path, body);
    t.equal(reply.status, 400, name);
    t.match(JSON.stringify(reply.body), message, name);
  }
});
