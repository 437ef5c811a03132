/**
 * An output format as one llama.cpp grammar (GBNF), for GGUF models: the counterpart of the
 * structural tags grammar.ts compiles with xgrammar for MLX models. Fixed text is a quoted
 * literal, a sequence a concatenation, a choice an alternation, and each JSON part the rules
 * node-llama-cpp generates for its schema, renamed under a prefix of its own so that the schemas
 * of several tools (one per branch of a required call's choice) do not share rule names.
 */
import type { GbnfJsonSchema, Llama } from 'node-llama-cpp';
import type { OutputFormat } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';

type JsonFormat = Extract<OutputFormat, { type: 'json' }>;

/** What the translation needs of node-llama-cpp: its JSON-schema grammar generator. */
export type JsonGrammarSource = Pick<Llama, 'createGrammarForJsonSchema'>;

/** JSON Schema keywords node-llama-cpp's grammar generator honours, plus annotations that constrain nothing. */
const GRAMMAR_KEYWORDS = new Set(['type', 'properties', 'required', 'additionalProperties', 'items', 'prefixItems', 'minItems', 'maxItems', 'enum', 'const', 'oneOf', '$defs', '$ref', 'format', 'minLength', 'maxLength', 'minProperties', 'maxProperties', 'description', 'title', '$schema', 'default', 'examples']);

/** Keywords whose value holds subschemas: by name, by position, or as the value itself. */
const SUBSCHEMAS: Record<string, 'named' | 'listed' | 'single'> = { properties: 'named', $defs: 'named', prefixItems: 'listed', oneOf: 'listed', items: 'single', additionalProperties: 'single' };

/** The subschemas in keyword `key`'s `value`, each with the path segment that leads to it ('' for the value itself). */
function subschemas(key: string, value: unknown): [string, unknown][] {
  switch (SUBSCHEMAS[key]) {
    case 'named':
      return Object.entries(value as Record<string, unknown>);
    case 'listed':
      return Array.isArray(value) ? value.map((child, i): [string, unknown] => [String(i), child]) : [];
    case 'single':
      return [['', value]];
    default:
      return [];
  }
}

/** Keyword `key`'s `value` with each of its subschemas replaced by `change(subschema)`. */
function mapSubschemas(key: string, value: unknown, change: (schema: unknown) => unknown): unknown {
  const changed = subschemas(key, value).map(([name, child]): [string, unknown] => [name, change(child)]);
  switch (SUBSCHEMAS[key]) {
    case 'named':
      return Object.fromEntries(changed);
    case 'listed':
      return Array.isArray(value) ? changed.map(([, child]) => child) : value;
    case 'single':
      return changed[0]?.[1];
    default:
      return value;
  }
}

/** The first keyword of `schema` a llama.cpp grammar would not honour (e.g. `minimum`), with where it is; null when there is none. */
function unhonouredKeyword(schema: unknown, at: string): string | null {
  if (typeof schema !== 'object' || schema === null) return null;
  for (const [key, value] of Object.entries(schema as Record<string, unknown>)) {
    if (!GRAMMAR_KEYWORDS.has(key)) return `'${key}' at ${at || '/'}`;
    for (const [name, child] of subschemas(key, value)) {
      const found = unhonouredKeyword(child, `${at}/${key}${name ? `/${name}` : ''}`);
      if (found) return found;
    }
  }
  return null;
}

/**
 * `schema` with every object that does not say otherwise open to properties beyond those it
 * lists, as a format that is not `closed` allows: node-llama-cpp closes them by default, which
 * would make an "any object" (json_object, Ollama's "json") always `{}`.
 */
function openObjects(schema: unknown): unknown {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) return schema;
  const opened = Object.fromEntries(Object.entries(schema as Record<string, unknown>).map(([key, value]) => [key, mapSubschemas(key, value, openObjects)]));
  const type = opened.type;
  if ((type === 'object' || (Array.isArray(type) && type.includes('object'))) && !('additionalProperties' in opened)) opened.additionalProperties = true;
  return opened;
}

/**
 * node-llama-cpp's number rules allow exponents of up to 16 digits, so an "integer" can come out
 * as 5e-660 and a number as 1e999 (Infinity): integers get no exponent, numbers one of two digits.
 */
function boundExponents(grammar: string): string {
  const exponent = ' ([eE] [-+]? ("0" | [1-9] [0-9]{0,15}))?';
  return grammar
    .split('\n')
    .map((rule) => (rule.startsWith('integer-number-rule ::=') ? rule.replace(exponent, '') : rule.replace(exponent, ' ([eE] [-+]? [0-9]{1,2})?')))
    .join('\n');
}

/**
 * node-llama-cpp ends a schema's root rule with newlines that its own chat wrapper stops on; here
 * the JSON is followed by a tool call's closing markers, or by the end of the output.
 */
const ROOT_SUFFIX = ' "\\n\\n\\n\\n" [\\n]*';

/** `text` as a GBNF string literal: quotes, backslashes and control characters escaped. */
export function gbnfLiteral(text: string): string {
  const escaped = text.replace(/[\\"\x00-\x1f\x7f]/g, (char) => {
    switch (char) {
      case '\\': return '\\\\';
      case '"': return '\\"';
      case '\n': return '\\n';
      case '\r': return '\\r';
      case '\t': return '\\t';
      default: return `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`;
    }
  });
  return `"${escaped}"`;
}

const RULE_NAME_CHAR = /[A-Za-z0-9-]/;

/**
 * `grammar` with each rule it defines renamed to `prefix` + name, where defined and where used.
 * Names are read only outside string literals, character classes and repetition counts, whose
 * text (`"root"`, `[a-z]`, `{0,15}`) must stay as it is.
 */
function prefixRuleNames(grammar: string, prefix: string): string {
  const defined = new Set([...grammar.matchAll(/^([A-Za-z0-9-]+) ::=/gm)].map((match) => match[1] as string));
  let out = '';
  let i = 0;
  while (i < grammar.length) {
    const char = grammar[i] as string;
    const close = char === '"' ? '"' : char === '[' ? ']' : char === '{' ? '}' : null;
    if (close) {
      let end = i + 1;
      while (end < grammar.length && grammar[end] !== close) end += grammar[end] === '\\' ? 2 : 1;
      out += grammar.slice(i, end + 1);
      i = end + 1;
    } else if (RULE_NAME_CHAR.test(char)) {
      let end = i;
      while (end < grammar.length && RULE_NAME_CHAR.test(grammar[end] as string)) end++;
      const word = grammar.slice(i, end);
      out += defined.has(word) ? prefix + word : word;
      i = end;
    } else {
      out += char;
      i++;
    }
  }
  return out;
}

/** The rules of one schema's JSON, its root rule named `${prefix}root`. */
async function jsonRules(llama: JsonGrammarSource, format: JsonFormat, prefix: string): Promise<string> {
  const unhonoured = unhonouredKeyword(format.schema, '');
  if (unhonoured) throw new ServeError('unsupported', `a GGUF model's JSON output is constrained by a llama.cpp grammar, which cannot honour the schema keyword ${unhonoured}; leave it out, or use an MLX model`);
  const schema = format.closed ? format.schema : openObjects(format.schema);
  const generated = (await llama.createGrammarForJsonSchema<GbnfJsonSchema>(schema as GbnfJsonSchema)).grammar;
  const [root = '', ...rest] = generated.split('\n');
  if (!root.startsWith('root ::= ') || !root.endsWith(ROOT_SUFFIX)) throw new ServeError('internal_error', `node-llama-cpp's JSON grammar has an unexpected root rule: ${root}`);
  return prefixRuleNames(boundExponents([root.slice(0, -ROOT_SUFFIX.length), ...rest].join('\n')), prefix);
}

/** `format` as a whole GBNF grammar whose `root` matches exactly the outputs it allows. */
export async function outputFormatGbnf(llama: JsonGrammarSource, format: OutputFormat): Promise<string> {
  const rules: string[] = [];
  const expression = async (part: OutputFormat): Promise<string> => {
    switch (part.type) {
      case 'text':
        return gbnfLiteral(part.value);
      case 'json': {
        // Parts are translated one after another, so the count of rules so far numbers this one.
        const prefix = `json${rules.length}-`;
        rules.push(await jsonRules(llama, part, prefix));
        return `${prefix}root`;
      }
      case 'sequence':
      case 'or': {
        const elements: string[] = [];
        for (const element of part.elements) elements.push(await expression(element));
        return `(${elements.join(part.type === 'or' ? ' | ' : ' ')})`;
      }
    }
  };
  const root = await expression(format);
  return [`root ::= ${root}`, ...rules].join('\n');
}
