/**
 * The translation of an output format into one llama.cpp grammar (workers/constraints/gbnf.ts),
 * checked against node-llama-cpp's real JSON-schema rules and parsed by llama.cpp itself.
 */
import { getLlama, LlamaLogLevel, type GbnfJsonSchema } from 'node-llama-cpp';
import t from 'tap';
import type { OutputFormat } from '../core/protocol.ts';
import { gbnfLiteral, outputFormatGbnf } from '../workers/constraints/gbnf.ts';

const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error });

/** Each rule name the grammar defines, as often as it defines it. */
function definitions(grammar: string): string[] {
  return [...grammar.matchAll(/^([A-Za-z0-9-]+) ::=/gm)].map((match) => match[1] as string);
}

t.test('fixed text becomes a literal with quotes, backslashes and control characters escaped', async (t) => {
  t.equal(gbnfLiteral('<tool_call>\n{"name": "a\\b"\t\r\x01\x7f é'), '"<tool_call>\\n{\\"name\\": \\"a\\\\b\\"\\t\\r\\x01\\x7f é"');
  const grammar = await outputFormatGbnf(llama, { type: 'text', value: 'say "hi"\\\n' });
  t.equal(grammar, 'root ::= "say \\"hi\\"\\\\\\n"');
  await t.resolves(llama.createGrammar({ grammar }), 'llama.cpp parses it');
});

t.test('two schemas in a choice: each keeps its own rules under its own prefix, between its markers', async (t) => {
  // Both schemas' enums are node-llama-cpp's `rule0` and `val0`; the first names a property "root"
  // and the second an enum value "rule0", text that must not be renamed.
  const first = { type: 'object', properties: { root: { enum: ['a', 'b'] } }, required: ['root'], additionalProperties: false };
  const second = { type: 'object', properties: { n: { type: 'integer' }, kind: { enum: ['rule0', 'x'] } }, required: ['n', 'kind'], additionalProperties: false };
  for (const schema of [first, second]) t.match((await llama.createGrammarForJsonSchema<GbnfJsonSchema>(schema as GbnfJsonSchema)).grammar, /^rule0 ::= /m, 'the generator names both enums rule0');
  const call = (name: string, schema: Record<string, unknown>): OutputFormat => ({
    type: 'sequence',
    elements: [{ type: 'text', value: `<tool_call>\n{"name": "${name}", "arguments": ` }, { type: 'json', schema, closed: true }, { type: 'text', value: '}\n</tool_call>' }],
  });
  const grammar = await outputFormatGbnf(llama, { type: 'or', elements: [call('f', first), call('g', second)] });
  const names = definitions(grammar);
  t.same(names.filter((name, i) => names.indexOf(name) !== i), [], 'no rule is defined twice');
  t.same(names.filter((name) => !/^json[01]-/.test(name)), ['root'], 'every JSON rule is prefixed');
  t.ok(names.includes('json0-rule0') && names.includes('json1-rule0'), 'each schema keeps its enum rule');
  t.equal(grammar.split('\n')[0], 'root ::= (("<tool_call>\\n{\\"name\\": \\"f\\", \\"arguments\\": " json0-root "}\\n</tool_call>") | ("<tool_call>\\n{\\"name\\": \\"g\\", \\"arguments\\": " json1-root "}\\n</tool_call>"))');
  t.match(grammar, /^json0-root ::= "\{" .*"\\"root\\""/m, 'a property named root stays as it is');
  t.match(grammar, /^json1-val0 ::= "\\"rule0\\""$/m, 'an enum value rule0 stays as it is');
  t.match(grammar, /^json1-root ::= .*"\}"$/m, 'the JSON ends at its closing brace, without node-llama-cpp\'s trailing newlines');
  t.match(grammar, /^json1-integer-number-rule ::= [^eE]*$/m, 'integers keep no exponent');
  await t.resolves(llama.createGrammar({ grammar }), 'llama.cpp parses it');
});

t.test('a schema keyword the grammar cannot honour is refused, wherever the schema sits', async (t) => {
  const format: OutputFormat = { type: 'sequence', elements: [{ type: 'text', value: '[' }, { type: 'json', schema: { type: 'object', properties: { n: { type: 'number', maximum: 3 } } }, closed: true }] };
  await t.rejects(outputFormatGbnf(llama, format), { code: 'unsupported', message: /cannot honour the schema keyword 'maximum' at \/properties\/n/ });
});

t.test('a format that is not closed lets objects hold properties beyond those listed', async (t) => {
  const schema = { type: 'object', properties: { inner: { type: 'object' } } };
  const open = await outputFormatGbnf(llama, { type: 'json', schema, closed: false });
  const closed = await outputFormatGbnf(llama, { type: 'json', schema, closed: true });
  const emptyOnly = /::= "\{" json0-whitespace-\S+ json0-whitespace-\S+ "\}"$/m;
  t.match(closed, emptyOnly, 'closed: the inner object, which lists no properties, can only be {}');
  t.notMatch(open, emptyOnly, 'open: no object is held to {}');
  t.match(open, /^json0-root ::= "\{" .*"\\"inner\\"".*\)\* /m, 'open: the outer object takes members after inner');
  t.notMatch(await outputFormatGbnf(llama, { type: 'json', schema: { type: 'object' }, closed: false }), emptyOnly, 'an "any object" (json_object) is not only {}');
  await t.resolves(llama.createGrammar({ grammar: open }), 'llama.cpp parses it');
});
