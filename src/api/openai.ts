/** OpenAI-compatible routes: they translate wire shapes to one GenerationRequest and back, nothing more. */
import type { ChatMessage, GenerationRequest, GenerationStats, PromptInput } from '../../core/protocol.ts';
import { badRequest } from '../../core/errors.ts';
import { describeGguf } from '../../core/gguf/describe.ts';
import { isGgufPath } from '../../core/gguf/format.ts';
import type { ModelEntry } from '../models/registry.ts';
import type { Exchange } from '../http/exchange.ts';
import { parseJsonObject, type Route } from '../http/server.ts';
import { openAiError } from './errors.ts';
import { Fields } from './fields.ts';
import { generateText, runGeneration, type ServeContext } from './context.ts';
import { openAiResponseFormat } from './response-format.ts';
import { parseToolCalls, planToolUse, ToolCallParser, type ParsedText, type ToolCall, type ToolCallSyntax } from './tool-calls.ts';

const SAMPLING_FIELDS = ['model', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'seed', 'stop', 'repetition_penalty', 'stream', 'stream_options', 'ignore_eos', 'n', 'user', 'presence_penalty', 'frequency_penalty', 'logprobs', 'top_logprobs', 'logit_bias', 'response_format', 'metadata', 'store', 'service_tier'] as const;
const COMPLETION_FIELDS = [...SAMPLING_FIELDS, 'prompt', 'echo', 'suffix', 'best_of'] as const;
const CHAT_FIELDS = [...SAMPLING_FIELDS, 'messages', 'tools', 'tool_choice', 'parallel_tool_calls', 'reasoning_effort'] as const;
const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

/** Fields clients send with their defaults; anything else asks for a feature we do not have. */
function rejectUnsupported(fields: Fields): void {
  const unsupported: [string, (v: unknown) => boolean][] = [
    ['presence_penalty', (v) => v === 0],
    ['frequency_penalty', (v) => v === 0],
    ['logprobs', (v) => v === false || v === null],
    ['echo', (v) => v === false],
    ['suffix', (v) => v === null || v === ''],
    ['best_of', (v) => v === 1],
    ['logit_bias', (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0],
  ];
  for (const [name, isDefault] of unsupported) {
    if (fields.has(name) && !isDefault(fields.raw(name))) throw badRequest(`'${name}' is not supported by this server`, name);
  }
  const n = fields.number('n', { integer: true, min: 1 });
  if (n !== undefined && n !== 1) throw badRequest(`'n' must be 1 (one choice per request), got ${n}`, 'n');
}

interface TranslatedRequest {
  request: GenerationRequest;
  model: ModelEntry;
  stream: boolean;
  includeUsage: boolean;
  /** Non-null: tool calls in this syntax are read out of the answer. */
  toolSyntax: ToolCallSyntax | null;
}

function commonRequest(ctx: ServeContext, exchange: Exchange, fields: Fields, prompt: PromptInput): TranslatedRequest {
  rejectUnsupported(fields);
  const model = ctx.registry.resolve(fields.string('model'));
  const maxTokens = fields.number('max_completion_tokens', { integer: true, min: 1 }) ?? fields.number('max_tokens', { integer: true, min: 1 }) ?? null;
  const streamOptions = fields.object('stream_options');
  const stream = fields.boolean('stream') ?? false;
  const includeUsage = streamOptions ? new Fields(streamOptions, 'stream_options.').boolean('include_usage') ?? false : false;
  const request: GenerationRequest = {
    id: exchange.requestId,
    model: model.name,
    prompt,
    maxTokens,
    sampling: {
      temperature: fields.number('temperature', { min: 0, max: 2 }) ?? 1,
      topP: fields.number('top_p', { above: 0, max: 1 }) ?? 1,
      topK: fields.number('top_k', { integer: true, min: -1 }) ?? 0,
      minP: fields.number('min_p', { min: 0, max: 1 }) ?? 0,
      repetitionPenalty: fields.number('repetition_penalty', { above: 0, max: 10 }) ?? 1,
      repetitionContextSize: 64,
      seed: fields.number('seed', { integer: true }) ?? null,
    },
    stop: fields.stringList('stop', 16),
    ignoreEos: fields.boolean('ignore_eos') ?? false,
  };
  const format = openAiResponseFormat(fields.object('response_format'));
  if (format) request.format = format;
  if (request.sampling.topK < 0) request.sampling.topK = 0;
  return { request, model, stream, includeUsage, toolSyntax: null };
}

function completionPrompt(fields: Fields): PromptInput {
  const prompt = fields.raw('prompt');
  if (typeof prompt === 'string') return { kind: 'text', text: prompt, addSpecialTokens: true };
  if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === 'string') return { kind: 'text', text: prompt[0], addSpecialTokens: true };
  if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((t) => Number.isInteger(t))) return { kind: 'tokens', ids: prompt as number[] };
  if (prompt === undefined || prompt === null) throw badRequest("'prompt' is required", 'prompt');
  throw badRequest("'prompt' must be a string, a list of one string, or a list of token ids", 'prompt');
}

function messageText(content: unknown, index: number): string {
  if (typeof content === 'string') return content;
  if (content === null || content === undefined) return '';
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        const p = part as { type?: unknown; text?: unknown };
        if (p && p.type === 'text' && typeof p.text === 'string') return p.text;
        throw badRequest(`messages[${index}].content[${j}]: only text parts are supported`, `messages[${index}].content`);
      })
      .join('');
  }
  throw badRequest(`messages[${index}].content must be a string or a list of text parts`, `messages[${index}].content`);
}

export function chatMessages(value: unknown): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0) throw badRequest("'messages' must be a non-empty list", 'messages');
  return value.map((raw, i) => {
    if (typeof raw !== 'object' || raw === null) throw badRequest(`messages[${i}] must be an object`, 'messages');
    const m = raw as Record<string, unknown>;
    if (typeof m.role !== 'string' || !ROLES.includes(m.role)) throw badRequest(`messages[${i}].role must be one of ${ROLES.join(', ')}`, 'messages');
    const message: ChatMessage = { role: m.role === 'developer' ? 'system' : (m.role as ChatMessage['role']), content: messageText(m.content, i) };
    if (Array.isArray(m.tool_calls)) message.tool_calls = m.tool_calls;
    if (typeof m.tool_call_id === 'string') message.tool_call_id = m.tool_call_id;
    if (typeof m.name === 'string') message.name = m.name;
    return message;
  });
}

const usage = (stats: GenerationStats) => ({
  prompt_tokens: stats.promptTokens,
  completion_tokens: stats.completionTokens,
  total_tokens: stats.promptTokens + stats.completionTokens,
  prompt_tokens_details: { cached_tokens: stats.cachedTokens },
});
const finishReason = (stats: GenerationStats, called = false): string => (stats.finishReason === 'length' ? 'length' : called ? 'tool_calls' : 'stop');
const wireCall = (call: ToolCall, index: number) => ({ index, id: call.id, type: 'function', function: { name: call.name, arguments: call.arguments } });
const sse = (data: unknown): string => `data: ${JSON.stringify(data)}\n\n`;

interface Shape {
  object: string;
  chunkObject: string;
  idPrefix: string;
  choice(answer: ParsedText, stats: GenerationStats): Record<string, unknown>;
  delta(text: string): Record<string, unknown>;
  /** Calls completed in this chunk, numbered from `first` across the stream. */
  callsDelta(calls: ToolCall[], first: number): Record<string, unknown>;
  opening: Record<string, unknown> | null;
  closing(stats: GenerationStats, called: boolean): Record<string, unknown>;
}

const completionShape: Shape = {
  object: 'text_completion',
  chunkObject: 'text_completion',
  idPrefix: 'cmpl-',
  choice: ({ content }, stats) => ({ index: 0, text: content, logprobs: null, finish_reason: finishReason(stats) }),
  delta: (text) => ({ index: 0, text, logprobs: null, finish_reason: null }),
  callsDelta: () => {
    throw new Error('completions carry no tool calls');
  },
  opening: null,
  closing: (stats) => ({ index: 0, text: '', logprobs: null, finish_reason: finishReason(stats) }),
};

const chatShape: Shape = {
  object: 'chat.completion',
  chunkObject: 'chat.completion.chunk',
  idPrefix: 'chatcmpl-',
  choice: ({ content, calls }, stats) => ({
    index: 0,
    message: calls.length > 0 ? { role: 'assistant', content: content || null, tool_calls: calls.map(wireCall) } : { role: 'assistant', content },
    logprobs: null,
    finish_reason: finishReason(stats, calls.length > 0),
  }),
  delta: (text) => ({ index: 0, delta: { content: text }, logprobs: null, finish_reason: null }),
  callsDelta: (calls, first) => ({ index: 0, delta: { tool_calls: calls.map((call, i) => wireCall(call, first + i)) }, logprobs: null, finish_reason: null }),
  opening: { index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null },
  closing: (stats, called) => ({ index: 0, delta: {}, logprobs: null, finish_reason: finishReason(stats, called) }),
};

async function respond(ctx: ServeContext, exchange: Exchange, shape: Shape, parsed: TranslatedRequest): Promise<void> {
  const { request, model, stream, includeUsage, toolSyntax } = parsed;
  const id = shape.idPrefix + request.id;
  const created = Math.floor(Date.now() / 1000);
  const envelope = { id, object: shape.chunkObject, created, model: request.model };
  if (!stream) {
    const { text, stats } = await generateText(ctx, exchange, request, model);
    const answer = toolSyntax ? parseToolCalls(toolSyntax, text) : { content: text, calls: [] };
    exchange.json(200, { id, object: shape.object, created, model: request.model, choices: [shape.choice(answer, stats)], usage: usage(stats) });
    return;
  }
  const parser = toolSyntax ? new ToolCallParser(toolSyntax) : null;
  let calls = 0;
  const send = ({ content, calls: completed }: ParsedText): void => {
    if (content) exchange.write(sse({ ...envelope, choices: [shape.delta(content)] }));
    if (completed.length > 0) exchange.write(sse({ ...envelope, choices: [shape.callsDelta(completed, calls)] }));
    calls += completed.length;
  };
  try {
    const stats = await runGeneration(ctx, exchange, request, model, (event) => {
      if (event.type === 'started') {
        exchange.startStream('text/event-stream; charset=utf-8');
        if (shape.opening) exchange.write(sse({ ...envelope, choices: [shape.opening] }));
      } else if (event.type === 'text') send(parser ? parser.push(event.text) : { content: event.text, calls: [] });
    });
    if (parser) send(parser.finish());
    exchange.write(sse({ ...envelope, choices: [shape.closing(stats, calls > 0)] }));
    if (includeUsage) exchange.write(sse({ ...envelope, choices: [], usage: usage(stats) }));
    exchange.end('data: [DONE]\n\n');
  } catch (error) {
    if (!exchange.isStreaming) throw error;
    const { message, code } = error as { message: string; code?: string };
    exchange.write(sse({ error: { message, type: 'server_error', code: code ?? 'internal_error' } }));
    exchange.end('data: [DONE]\n\n');
  }
}

/** Beyond OpenAI's fields: how the model is stored, and for a GGUF file what its header says. */
function formatFields(model: ModelEntry): Record<string, unknown> {
  if (!isGgufPath(model.path)) return { format: 'safetensors' };
  const gguf = describeGguf(model.path);
  return { format: 'gguf', architecture: gguf.architecture, quantization: gguf.quantization, context_length: gguf.contextLength };
}

export function openAiRoutes(ctx: ServeContext): Route[] {
  const body = async (exchange: Exchange): Promise<Record<string, unknown>> => parseJsonObject(await exchange.readBody(ctx.config.maxBodyBytes));
  return [
    {
      method: 'GET',
      path: '/v1/models',
      errors: openAiError,
      handler: (exchange) => {
        const data = ctx.registry.list().map((m) => ({ id: m.name, object: 'model', created: Math.floor(m.modifiedAt.getTime() / 1000), owned_by: m.origin, ...formatFields(m) }));
        exchange.json(200, { object: 'list', data });
      },
    },
    {
      method: 'POST',
      path: '/v1/completions',
      errors: openAiError,
      handler: async (exchange) => {
        const fields = Fields.strict(await body(exchange), COMPLETION_FIELDS);
        await respond(ctx, exchange, completionShape, commonRequest(ctx, exchange, fields, completionPrompt(fields)));
      },
    },
    {
      method: 'POST',
      path: '/v1/chat/completions',
      errors: openAiError,
      handler: async (exchange) => {
        const fields = Fields.strict(await body(exchange), CHAT_FIELDS);
        const tools = fields.raw('tools');
        if (tools !== undefined && tools !== null && !Array.isArray(tools)) throw badRequest("'tools' must be a list", 'tools');
        const messages = chatMessages(fields.raw('messages'));
        const translated = commonRequest(ctx, exchange, fields, { kind: 'chat', messages });
        const use = planToolUse(translated.model, Array.isArray(tools) ? tools : undefined, fields.raw('tool_choice'));
        const { request } = translated;
        if (use.tools) request.prompt = { kind: 'chat', messages, tools: use.tools };
        if (use.format) request.format = use.format;
        if (use.keepSpecialTokens) request.keepSpecialTokens = use.keepSpecialTokens;
        await respond(ctx, exchange, chatShape, { ...translated, toolSyntax: use.syntax });
      },
    },
  ];
}
