/**
 * LangChain agents find tools through `bindTools`: ChatOpenAI sends the tools and `tool_choice`
 * to our OpenAI route and reads the reply's `tool_calls` (whole) or `delta.tool_calls` (streamed)
 * into `AIMessage.tool_calls`. With `tool_choice: "required"` even the built-in model, whose
 * weights are random, must answer with one call whose arguments match the tool's schema.
 */
import type { AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { Ajv } from 'ajv';
import t, { type Test } from 'tap';
import { startServer } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0']);
t.teardown(() => server.stop());

const WEATHER = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
const validWeather = new Ajv({ strict: true }).compile(WEATHER);
const weatherTool = { type: 'function' as const, function: { name: 'get_weather', description: 'Weather in a city', parameters: WEATHER } };

function chat(seed: number) {
  return new ChatOpenAI({
    configuration: { baseURL: `${server.url}/v1` },
    apiKey: 'unused',
    model: 'tiny-qwen3',
    maxTokens: 120,
    maxRetries: 0,
  }).bindTools([weatherTool], { tool_choice: 'required', seed });
}

function hasOneValidCall(t: Test, message: AIMessageChunk, label: string): void {
  const calls = message.tool_calls ?? [];
  t.equal(calls.length, 1, `${label}: LangChain sees one tool call`);
  t.equal(calls[0]?.name, 'get_weather', `${label}: named after the bound tool`);
  t.ok(validWeather(calls[0]?.args), `${label}: its args match the schema ${JSON.stringify(validWeather.errors ?? [])}: ${JSON.stringify(calls[0]?.args)}`);
  t.ok(calls[0]?.id, `${label}: the call has an id to answer it with`);
}

t.test('bindTools with tool_choice "required": invoke returns a schema-valid tool call', async (t) => {
  const reply = await chat(21).invoke('Weather in Paris?');
  hasOneValidCall(t, reply, 'invoke');
  t.equal(reply.response_metadata.finish_reason, 'tool_calls', 'finish_reason says the turn ended in a call');
});

t.test('bindTools streamed: the concatenated chunks carry the same kind of call', async (t) => {
  let whole: AIMessageChunk | undefined;
  for await (const chunk of await chat(22).stream('Weather in Oslo?')) whole = whole ? whole.concat(chunk) : chunk;
  t.ok(whole, 'the stream yields chunks');
  if (whole) {
    t.ok((whole.tool_call_chunks ?? []).length > 0, 'tool_call_chunks arrive in the stream');
    hasOneValidCall(t, whole, 'stream');
  }
});
