/**
 * Ollama-compatible routes (docs/ollama-api.md): they translate Ollama's wire shapes to one
 * GenerationRequest and back, and map keep_alive onto the engine's keep-alive window.
 */
import { createHash } from 'node:crypto';
import { readOptionalJson } from '../../core/model-folder.ts';
import { join } from 'node:path';
import type { GenerationRequest, GenerationStats, PromptInput } from '../../core/protocol.ts';
import { badRequest } from '../../core/errors.ts';
import type { Exchange } from '../http/exchange.ts';
import { parseJsonObject, type Route } from '../http/server.ts';
import { ollamaError } from './errors.ts';
import { describeGguf, type GgufDescription } from '../../core/gguf/describe.ts';
import { isGgufPath } from '../../core/gguf/format.ts';
import { parameterCount } from '../models/footprint.ts';
import type { ModelEntry } from '../models/registry.ts';
import { PACKAGE_VERSION } from '../paths.ts';
import { deviceMemory } from '../../core/device-memory.ts';
import { runGeneration, type ServeContext } from './context.ts';
import { Fields } from './fields.ts';
import { chatMessages } from './openai.ts';
import { ollamaFormat } from './response-format.ts';
import { parseToolCalls, planToolUse, ToolCallParser, type ParsedText, type ToolCall, type ToolUse } from './tool-calls.ts';



const COMMON_FIELDS = ['model', 'stream', 'format', 'keep_alive', 'options', 'think', 'logprobs', 'top_logprobs'] as const;
const GENERATE_FIELDS = [...COMMON_FIELDS, 'prompt', 'suffix', 'system', 'template', 'context', 'raw', 'images'] as const;
/** tool_choice is ours, not Ollama's: OpenAI's meaning, so a client can require a call here too. */
const CHAT_FIELDS = [...COMMON_FIELDS, 'messages', 'tools', 'tool_choice'] as const;

const SAMPLING_OPTIONS = ['temperature', 'top_p', 'top_k', 'min_p', 'num_predict', 'seed', 'stop', 'repeat_penalty', 'repeat_last_n', 'num_ctx'];
/** llama.cpp runtime settings that mean nothing to MLX; accepted so existing clients keep working. */
const RUNTIME_OPTIONS = ['num_gpu', 'main_gpu', 'num_thread', 'num_batch', 'num_keep', 'use_mmap', 'use_mlock', 'numa', 'low_vram', 'vocab_only', 'f16_kv', 'logits_all', 'penalize_newline'];
/** Sampling features we do not have: accepted only at the value that turns them off. */
const OFF_VALUES: Record<string, number> = { typical_p: 1, tfs_z: 1, mirostat: 0, presence_penalty: 0, frequency_penalty: 0 };
const MIROSTAT_TUNING = ['mirostat_tau', 'mirostat_eta'];
const OPTION_FIELDS = [...SAMPLING_OPTIONS, ...RUNTIME_OPTIONS, ...Object.keys(OFF_VALUES), ...MIROSTAT_TUNING];

/** Ollama's defaults for a model without Modelfile parameters. */
const DEFAULTS = { temperature: 0.8, topP: 0.9, topK: 40, minP: 0, repeatPenalty: 1.1, repeatLastN: 64 };
/** What Ollama reports for a model kept loaded forever: now plus the largest Go duration. */
const FOREVER_MS = 9_223_372_036_854;
const NS_PER_MS = 1e6;

const GO_DURATION = /^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$/;
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * keep_alive as Ollama reads it: a number of seconds or a Go duration ("5m", "1h30m", "0");
 * negative keeps the model loaded (null). Absent: the server default (undefined).
 */
export function parseKeepAlive(value: unknown): number | null | undefined {
  if (value === undefined || value === null) return undefined;
  let ms: number;
  if (typeof value === 'number' && Number.isFinite(value)) ms = value * 1000;
  else if (typeof value === 'string' && /^[-+]?\d+(\.\d+)?$/.test(value.trim())) ms = Number(value.trim()) * 1000;
  else if (typeof value === 'string' && GO_DURATION.test(value.trim())) {
    const text = value.trim();
    const sign = text.startsWith('-') ? -1 : 1;
    ms = 0;
    for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g)) ms += Number(amount) * (UNIT_MS[unit as string] as number);
    ms *= sign;
  } else throw badRequest(`'keep_alive' must be a number of seconds or a duration such as "5m", got ${JSON.stringify(value)}`, 'keep_alive');
  return ms < 0 ? null : Math.round(ms);
}

function requireModel(ctx: ServeContext, fields: Fields): ModelEntry {
  const name = fields.string('model');
  if (!name) throw badRequest('model is required', 'model');
  return ctx.registry.resolve(name);
}

function refuseUnsupported(fields: Fields): void {
  const think = fields.raw('think');
  if (think !== undefined && think !== null && think !== false) throw badRequest("'think' is not supported: thinking is not separated from the answer; only think: false (thinking turned off) is accepted", 'think');
  if (fields.has('logprobs') && fields.raw('logprobs') !== false) throw badRequest("'logprobs' is not supported by this server", 'logprobs');
  for (const name of ['suffix', 'template', 'context', 'images']) {
    const value = fields.raw(name);
    const empty = value === undefined || value === null || value === '' || (Array.isArray(value) && value.length === 0);
    if (!empty) throw badRequest(`'${name}' is not supported by this server`, name);
  }
}

function sampling(options: Record<string, unknown>): Pick<GenerationRequest, 'sampling' | 'maxTokens' | 'stop'> {
  const o = Fields.strict(options, OPTION_FIELDS, 'options.');
  for (const [name, off] of Object.entries(OFF_VALUES)) {
    const value = o.number(name);
    if (value !== undefined && value !== off) throw badRequest(`'options.${name}' is not supported by this server (only ${off}, which turns it off)`, `options.${name}`);
  }
  o.number('num_ctx', { integer: true, min: 1 });
  const numPredict = o.number('num_predict', { integer: true });
  const seed = o.number('seed', { integer: true }) ?? -1;
  const repeatLastN = o.number('repeat_last_n', { integer: true, min: -1 }) ?? DEFAULTS.repeatLastN;
  const repeatPenalty = o.number('repeat_penalty', { above: 0, max: 10 }) ?? DEFAULTS.repeatPenalty;
  return {
    // Ollama's -1 (infinite) and -2 (fill the context) both run until the context is full; unset or 0 is the server's default.
    maxTokens: numPredict === undefined || numPredict === 0 ? null : numPredict < 0 ? 'context' : numPredict,
    stop: o.stringList('stop', 16),
    sampling: {
      temperature: o.number('temperature', { min: 0, max: 100 }) ?? DEFAULTS.temperature,
      topP: o.number('top_p', { above: 0, max: 1 }) ?? DEFAULTS.topP,
      topK: Math.max(0, o.number('top_k', { integer: true }) ?? DEFAULTS.topK),
      minP: o.number('min_p', { min: 0, max: 1 }) ?? DEFAULTS.minP,
      repetitionPenalty: repeatLastN === 0 ? 1 : repeatPenalty,
      repetitionContextSize: repeatLastN === -1 ? Number.MAX_SAFE_INTEGER : repeatLastN,
      seed: seed >= 0 ? seed : null,
    },
  };
}

interface Shape {
  /** The part of each object that carries text (and, in chat, tool calls). */
  text(text: string, calls?: ToolCall[]): Record<string, unknown>;
}
/** Ollama's tool call: the arguments as an object, not as JSON text. */
const wireCall = (call: ToolCall) => ({ function: { name: call.name, arguments: JSON.parse(call.arguments) as unknown } });
const generateShape: Shape = { text: (text) => ({ response: text }) };
const chatShape: Shape = {
  text: (text, calls = []) => ({ message: { role: 'assistant', content: text, ...(calls.length > 0 ? { tool_calls: calls.map(wireCall) } : {}) } }),
};

const NO_TOOLS: ToolUse = { syntax: null };

const ns = (ms: number): number => Math.round(ms * NS_PER_MS);

interface Parsed {
  model: ModelEntry;
  stream: boolean;
  keepAliveMs: number | null | undefined;
  /** Null: no prompt, so the request only loads (or with keep_alive 0, unloads) the model. */
  prompt: PromptInput | null;
  fields: Fields;
  tools: ToolUse;
}

async function respond(ctx: ServeContext, exchange: Exchange, shape: Shape, parsed: Parsed): Promise<void> {
  const { model, stream, keepAliveMs, prompt, fields, tools } = parsed;
  const started = performance.now();
  const startedAt = Date.now();
  const envelope = (): Record<string, unknown> => ({ model: model.name, created_at: new Date().toISOString() });
  const keepAlive = keepAliveMs === undefined ? ctx.engine.defaultKeepAliveMs : keepAliveMs;
  const finish = (body: Record<string, unknown>): void => {
    if (exchange.isStreaming) exchange.end(`${JSON.stringify(body)}\n`);
    else if (stream) exchange.send(200, `${JSON.stringify(body)}\n`, 'application/x-ndjson');
    else exchange.json(200, body);
  };

  if (!prompt) {
    if (keepAlive === 0) {
      if (ctx.engine.loadedModel?.name === model.name) await ctx.engine.keepAlive(0);
      finish({ ...envelope(), ...shape.text(''), done: true, done_reason: 'unload' });
      return;
    }
    await ctx.engine.load(model);
    await ctx.engine.keepAlive(keepAlive);
    finish({ ...envelope(), ...shape.text(''), done: true, done_reason: 'load' });
    return;
  }

  const request: GenerationRequest = { id: exchange.requestId, model: model.name, prompt, ignoreEos: false, ...sampling(fields.object('options') ?? {}) };
  const format = tools.format ?? ollamaFormat(fields.raw('format'));
  if (format) request.format = format;
  if (tools.keepSpecialTokens) request.keepSpecialTokens = tools.keepSpecialTokens;
  const parts: string[] = [];
  const parser = stream && tools.syntax ? new ToolCallParser(tools.syntax) : null;
  const send = ({ content, calls }: ParsedText): void => {
    if (!content && calls.length === 0) return;
    exchange.startStream('application/x-ndjson');
    exchange.write(`${JSON.stringify({ ...envelope(), ...shape.text(content, calls), done: false })}\n`);
  };
  let stats: GenerationStats;
  try {
    stats = await runGeneration(ctx, exchange, request, model, (event) => {
      if (event.type !== 'text') return;
      if (!stream) parts.push(event.text);
      else send(parser ? parser.push(event.text) : { content: event.text, calls: [] });
    });
    if (parser) send(parser.finish());
    await ctx.engine.keepAlive(keepAlive);
  } catch (error) {
    await ctx.engine.keepAlive(keepAlive);
    if (!exchange.isStreaming) throw error;
    exchange.end(`${JSON.stringify({ error: (error as Error).message })}\n`);
    return;
  }
  const loaded = ctx.engine.loadedModel;
  const loadMs = loaded && loaded.loadedAt.getTime() >= startedAt ? loaded.loadMs : 0;
  const whole = stream ? { content: '', calls: [] } : tools.syntax ? parseToolCalls(tools.syntax, parts.join('')) : { content: parts.join(''), calls: [] };
  finish({
    ...envelope(),
    ...shape.text(whole.content, whole.calls),
    done: true,
    done_reason: stats.finishReason === 'length' ? 'length' : 'stop',
    total_duration: ns(performance.now() - started),
    load_duration: ns(loadMs),
    prompt_eval_count: stats.promptTokens,
    prompt_eval_duration: ns(stats.promptMs),
    eval_count: stats.completionTokens,
    eval_duration: ns(stats.decodeMs),
  });
}

/** A parameter count as Ollama shows it: three significant figures with K, M, B or T (39.7M, 494M, 8.03B). */
export function humanParameterCount(count: number): string {
  const scale = ([[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']] as const).find(([size]) => count >= size);
  if (!scale) return String(count);
  const value = count / scale[0];
  return `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)}${scale[1]}`;
}

/** Parameters counted from the safetensors headers' shapes; null when the weights are not on disk or cannot be read (loading the model says why). */
function modelParameters(model: ModelEntry): number | null {
  try {
    return parameterCount(model.path) || null;
  } catch {
    return null;
  }
}

const ggufDetails = (gguf: GgufDescription): Record<string, unknown> => ({
  parent_model: '',
  format: 'gguf',
  family: gguf.architecture,
  families: [gguf.architecture],
  parameter_size: humanParameterCount(gguf.parameters),
  quantization_level: gguf.quantization,
});

/** What Ollama calls a model's details, read from the folder's config.json and weight headers, or the GGUF header. */
function details(model: ModelEntry): Record<string, unknown> {
  if (isGgufPath(model.path)) return ggufDetails(describeGguf(model.path));
  const config = readOptionalJson<Record<string, unknown>>(join(model.path, 'config.json'), 'config.json');
  const family = typeof config.model_type === 'string' ? config.model_type : 'unknown';
  const quantization = config.quantization as { bits?: number } | undefined;
  const dtype = typeof config.torch_dtype === 'string' ? config.torch_dtype : '';
  const level = quantization?.bits ? `Q${quantization.bits}` : ({ float32: 'F32', float16: 'F16', bfloat16: 'BF16' } as Record<string, string>)[dtype] ?? 'unknown';
  const count = modelParameters(model);
  return { parent_model: '', format: 'safetensors', family, families: [family], parameter_size: count === null ? '' : humanParameterCount(count), quantization_level: level };
}

/** Not a content hash (that would read every weight): it changes when the folder's files change. */
const digest = (model: ModelEntry): string => createHash('sha256').update(`${model.path}\0${model.sizeBytes}\0${model.modifiedAt.getTime()}`).digest('hex');

function listEntry(model: ModelEntry): Record<string, unknown> {
  return { name: model.name, model: model.name, modified_at: model.modifiedAt.toISOString(), size: model.sizeBytes, digest: digest(model), details: details(model) };
}

function showGguf(model: ModelEntry): Record<string, unknown> {
  const gguf = describeGguf(model.path);
  return {
    license: '',
    modelfile: `# Served by mlx-server from a GGUF file; there is no Modelfile.\nFROM ${model.path}\n`,
    parameters: '',
    template: gguf.chatTemplate,
    system: '',
    details: ggufDetails(gguf),
    model_info: gguf.info,
    capabilities: ['completion', ...(gguf.chatTemplate.includes('tools') ? ['tools'] : [])],
    modified_at: model.modifiedAt.toISOString(),
  };
}

function show(model: ModelEntry): Record<string, unknown> {
  if (isGgufPath(model.path)) return showGguf(model);
  const config = readOptionalJson<Record<string, unknown>>(join(model.path, 'config.json'), 'config.json');
  const tokenizerConfig = readOptionalJson<Record<string, unknown>>(join(model.path, 'tokenizer_config.json'), 'tokenizer_config.json');
  const generation = readOptionalJson<Record<string, unknown>>(join(model.path, 'generation_config.json'), 'generation_config.json');
  const arch = typeof config.model_type === 'string' ? config.model_type : 'unknown';
  const count = modelParameters(model);
  const info: Record<string, unknown> = { 'general.architecture': arch, ...(count === null ? {} : { 'general.parameter_count': count }) };
  const keys: [string, string][] = [
    ['max_position_embeddings', 'context_length'],
    ['hidden_size', 'embedding_length'],
    ['num_hidden_layers', 'block_count'],
    ['intermediate_size', 'feed_forward_length'],
    ['num_attention_heads', 'attention.head_count'],
    ['num_key_value_heads', 'attention.head_count_kv'],
    ['vocab_size', 'vocab_size'],
    ['rope_theta', 'rope.freq_base'],
  ];
  for (const [from, to] of keys) if (typeof config[from] === 'number') info[`${arch}.${to}`] = config[from];
  const template = typeof tokenizerConfig.chat_template === 'string' ? tokenizerConfig.chat_template : '';
  const parameters = ['temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty']
    .filter((name) => typeof generation[name] === 'number')
    .map((name) => `${name === 'repetition_penalty' ? 'repeat_penalty' : name} ${generation[name] as number}`)
    .join('\n');
  return {
    license: '',
    modelfile: `# Served by mlx-server from a folder; there is no Modelfile.\nFROM ${model.path}\n`,
    parameters,
    template,
    system: '',
    details: details(model),
    model_info: info,
    capabilities: ['completion', ...(template.includes('tools') ? ['tools'] : [])],
    modified_at: model.modifiedAt.toISOString(),
  };
}

export function ollamaRoutes(ctx: ServeContext): Route[] {
  const body = async (exchange: Exchange): Promise<Record<string, unknown>> => parseJsonObject(await exchange.readBody(ctx.config.maxBodyBytes));
  const common = (fields: Fields): Pick<Parsed, 'model' | 'stream' | 'keepAliveMs' | 'fields'> => {
    const model = requireModel(ctx, fields);
    refuseUnsupported(fields);
    fields.object('options');
    return { model, stream: fields.boolean('stream') ?? true, keepAliveMs: parseKeepAlive(fields.raw('keep_alive')), fields };
  };
  /** A generate or chat route; `prompt` returns null for a load-only request. */
  const generation = (path: string, known: readonly string[], shape: Shape, prompt: (fields: Fields, model: ModelEntry) => { prompt: PromptInput | null; tools: ToolUse }): Route => ({
    method: 'POST',
    path,
    errors: ollamaError,
    handler: async (exchange) => {
      const fields = Fields.strict(await body(exchange), known);
      const parsed = common(fields);
      await respond(ctx, exchange, shape, { ...parsed, ...prompt(fields, parsed.model) });
    },
  });
  const templateArgs = (fields: Fields): Record<string, unknown> => (fields.raw('think') === false ? { templateArgs: { enable_thinking: false } } : {});
  const running = (): Record<string, unknown>[] => {
    const loaded = ctx.engine.loadedModel;
    if (!loaded) return [];
    const entry = ctx.registry.list().find((m) => m.path === loaded.path);
    const expiresAt = ctx.engine.expiresAt ?? new Date(Date.now() + FOREVER_MS);
    return [{
      ...(entry ? listEntry(entry) : { name: loaded.name, model: loaded.name }),
      size: loaded.bytes,
      // Ollama counts what sits on the GPU as VRAM: all of it when MLX runs on Metal (unified memory), none on the CPU build.
      size_vram: deviceMemory(ctx.telemetry) ? loaded.bytes : 0,
      context_length: loaded.contextLength,
      expires_at: expiresAt.toISOString(),
    }];
  };
  return [
    { method: 'GET', path: '/', errors: ollamaError, quiet: true, handler: (exchange) => exchange.send(200, 'Ollama is running', 'text/plain; charset=utf-8') },
    { method: 'HEAD', path: '/', errors: ollamaError, quiet: true, handler: (exchange) => exchange.send(200, 'Ollama is running', 'text/plain; charset=utf-8') },
    { method: 'GET', path: '/api/version', errors: ollamaError, quiet: true, handler: (exchange) => exchange.json(200, { version: PACKAGE_VERSION }) },
    { method: 'GET', path: '/api/tags', errors: ollamaError, handler: (exchange) => exchange.json(200, { models: ctx.registry.list().map(listEntry) }) },
    { method: 'GET', path: '/api/ps', errors: ollamaError, quiet: true, handler: (exchange) => exchange.json(200, { models: running() }) },
    {
      method: 'POST',
      path: '/api/show',
      errors: ollamaError,
      handler: async (exchange) => {
        const fields = Fields.strict(await body(exchange), ['model', 'name', 'verbose', 'system', 'template', 'options']);
        const name = fields.string('model') ?? fields.string('name');
        if (!name) throw badRequest('model is required', 'model');
        exchange.json(200, show(ctx.registry.resolve(name)));
      },
    },
    generation('/api/generate', GENERATE_FIELDS, generateShape, (fields) => {
      const text = fields.string('prompt') ?? '';
      const system = fields.string('system');
      const raw = fields.boolean('raw') ?? false;
      if (raw && system) throw badRequest("'system' has no effect with raw: true (no template is applied)", 'system');
      if (text.length === 0) return { prompt: null, tools: NO_TOOLS };
      const prompt: PromptInput = raw
        ? { kind: 'text', text, addSpecialTokens: true }
        : { kind: 'chat', messages: [...(system ? [{ role: 'system' as const, content: system }] : []), { role: 'user', content: text }], ...templateArgs(fields) };
      return { prompt, tools: NO_TOOLS };
    }),
    generation('/api/chat', CHAT_FIELDS, chatShape, (fields, model) => {
      const raw = fields.raw('messages');
      if (raw !== undefined && raw !== null && !Array.isArray(raw)) throw badRequest("'messages' must be a list", 'messages');
      const messages = (raw ?? []) as Record<string, unknown>[];
      messages.forEach((m, i) => {
        if (Array.isArray(m?.images) && m.images.length > 0) throw badRequest(`messages[${i}].images: images are not supported by this server`, 'messages');
      });
      const tools = fields.raw('tools');
      if (tools !== undefined && tools !== null && !Array.isArray(tools)) throw badRequest("'tools' must be a list", 'tools');
      // Ollama names a tool result's tool in tool_name; the chat templates read it as name.
      const renamed = messages.map((m) => (typeof m?.tool_name === 'string' && m.name === undefined ? { ...m, name: m.tool_name } : m));
      if (messages.length === 0) return { prompt: null, tools: NO_TOOLS };
      const use = planToolUse(model, Array.isArray(tools) ? tools : undefined, fields.raw('tool_choice'));
      return { prompt: { kind: 'chat', messages: chatMessages(renamed), ...(use.tools ? { tools: use.tools } : {}), ...templateArgs(fields) }, tools: use };
    }),
  ];
}
