/**
 * The llama.cpp engine, for GGUF models, through node-llama-cpp's prebuilt binaries. It sits
 * behind the same worker contract as the MLX engine: llama.cpp tokenizes and computes, while
 * the chat template (the GGUF's own, rendered with our Jinja renderer), the prompt checks, the
 * text stream, stop strings and usage counts are the ones every model gets.
 *
 * Batching: the context holds the sequences the main thread sized from the KV budget (at most
 * --max-batch, each of at most --gguf-context tokens and the model's trained context;
 * llamaContextShape); node-llama-cpp evaluates the sequences that have work in one batch, and
 * DecodeStep keeps the running requests in step so that they share it.
 * A sequence keeps its KV state after a request, and the next request on it reuses the prefix
 * they share (the prompt cache of this engine).
 */
import type { MessagePort } from 'node:worker_threads';
import { Template } from '@huggingface/jinja';
import { getLlama, LlamaGrammarEvaluationState, LlamaLogLevel, type Llama, type LlamaContext, type LlamaContextSequence, type LlamaGrammar, type LlamaModel, type SequenceEvaluateOptions, type Token } from 'node-llama-cpp';
import type { ChatMessage, GenerationRequest, LoadResult, LoadSpec, OutputFormat } from '../core/protocol.ts';
import { ServeError } from '../core/errors.ts';
import { describeGguf } from '../core/gguf/describe.ts';
import { readGgufHeader, type GgufHeader } from '../core/gguf/format.ts';
import type { CancelFlags } from '../core/cancel-flags.ts';
import type { Telemetry } from '../core/telemetry.ts';
import { outputFormatGbnf } from './constraints/gbnf.ts';
import { promptIdsInWorker, validatePrompt, type PromptTokenizer } from './prompt.ts';
import { LlamaBatches } from './llama-batches.ts';
import { loadThreadPool } from './llama-thread-pool.ts';
import { TokenStream } from './token-stream.ts';
import { renderChatTemplate, tokenBytesTable, TokenBytesTable, type TokenizerJson } from './tokenizer.ts';

/** llama.cpp's llama_token_type values that are not text. */
const CONTROL_TOKEN = 3;
const UNUSED_TOKEN = 5;

let runtime: Promise<Llama> | null = null;

/** node-llama-cpp's names for its builds; `auto` takes the best that loads, `false` the CPU build. */
const LLAMA_GPUS = ['auto', 'cuda', 'vulkan', 'metal', 'false'] as const;
type LlamaGpu = (typeof LLAMA_GPUS)[number];

/** MLX_SERVER_LLAMA_GPU picks one llama.cpp build (e.g. cuda on a machine that also has Vulkan); auto by default. */
function chosenGpu(): LlamaGpu {
  const wanted = process.env.MLX_SERVER_LLAMA_GPU ?? 'auto';
  if ((LLAMA_GPUS as readonly string[]).includes(wanted)) return wanted as LlamaGpu;
  throw new ServeError('runtime_check_failed', `MLX_SERVER_LLAMA_GPU is ${JSON.stringify(wanted)}: it must be one of ${LLAMA_GPUS.join(', ')}`);
}

/** node-llama-cpp's package of prebuilt binaries for this machine and build (e.g. @node-llama-cpp/linux-x64-cuda). */
function prebuiltPackage(gpu: LlamaGpu): string {
  const platform = ({ darwin: 'mac', win32: 'win' } as Record<string, string>)[process.platform] ?? process.platform;
  const variant = gpu === 'auto' ? (platform === 'mac' && process.arch === 'arm64' ? '-metal' : '') : gpu === 'false' ? '' : `-${gpu}`;
  return `@node-llama-cpp/${platform}-${process.arch}${variant}`;
}

/** The llama.cpp binary for this machine: a prebuilt one, never built or downloaded at run time. */
function llamaRuntime(): Promise<Llama> {
  runtime ??= Promise.resolve()
    .then(chosenGpu)
    .then((gpu) =>
      getLlama({ gpu: gpu === 'false' ? false : gpu, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error }).catch((error: unknown) => {
        throw new ServeError('runtime_check_failed',
          `no prebuilt llama.cpp binary loads here (${(error as Error).message.split('\n')[0]}); install ${prebuiltPackage(gpu)} to serve GGUF models`,
        );
      }),
    )
    .catch((error: unknown) => {
      runtime = null;
      throw error;
    });
  return runtime;
}

/**
 * llama.cpp's threads spin while they wait for each other, so more threads than free cores
 * stalls them all (node-llama-cpp's default is 4 on a 2-core machine). At most the physical
 * cores, as llama-server uses, each batch on as many as pay for themselves (LlamaBatches);
 * MLX_SERVER_LLAMA_THREADS sets a fixed count instead.
 */
function computeThreads(llama: Llama): { threads: number; adaptive: boolean } {
  const wanted = Number(process.env.MLX_SERVER_LLAMA_THREADS);
  return Number.isInteger(wanted) && wanted > 0 ? { threads: wanted, adaptive: false } : { threads: Math.max(1, llama.cpuMathCores), adaptive: true };
}

function stringArray(header: GgufHeader, key: string): string[] {
  const value = header.metadata.get(key);
  return Array.isArray(value) ? value.map(String) : [];
}

/**
 * The vocabulary's bytes per token, read from the GGUF: byte-level BPE (gpt2) tokens map back
 * through GPT-2's byte table, SentencePiece (llama) tokens through ▁ and <0xNN> byte tokens.
 */
function vocabularyText(header: GgufHeader): TokenBytesTable {
  const tokens = stringArray(header, 'tokenizer.ggml.tokens');
  const types = (header.metadata.get('tokenizer.ggml.token_type') as number[] | undefined) ?? [];
  const byteLevel = header.metadata.get('tokenizer.ggml.model') === 'gpt2';
  const json: TokenizerJson = {
    model: { type: 'BPE', vocab: tokens.map((token, id): [string, number] => [token, id]) },
    added_tokens: tokens.flatMap((content, id) => (types[id] === CONTROL_TOKEN || types[id] === UNUSED_TOKEN ? [{ id, content, special: true }] : [])),
    decoder: byteLevel
      ? { type: 'ByteLevel' }
      : { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' } }, { type: 'ByteFallback' }, { type: 'Strip', start: 1 }] },
  };
  return new TokenBytesTable(tokenBytesTable(json));
}

/**
 * Hands out the context's sequences, one per running request; the rest wait in order. A free
 * sequence whose cache holds most of the prompt is given to it; otherwise the lowest-numbered
 * free one, so that the running sequences' ids stay one run: llama.cpp decodes each run of
 * consecutive ids in a batch as a forward pass of its own (see llama-batches.ts).
 */
export class SequencePool {
  private readonly free: LlamaContextSequence[] = [];
  private readonly waiting: ((sequence: LlamaContextSequence) => void)[] = [];
  /** Each sequence's number in the order the context made them, which is its id there (none is ever given back). */
  private readonly ids = new Map<LlamaContextSequence, number>();

  constructor(private readonly context: LlamaContext) {}

  take(prompt: readonly number[]): Promise<LlamaContextSequence> {
    if (this.free.length > 0) {
      const cached = (sequence: LlamaContextSequence): number => commonPrefix(sequence.contextTokens, prompt);
      const best = this.free.reduce((a, b) => (cached(b) > cached(a) ? b : a));
      const id = (sequence: LlamaContextSequence): number => this.ids.get(sequence) ?? 0;
      const chosen = cached(best) * 2 >= prompt.length ? best : this.free.reduce((a, b) => (id(b) < id(a) ? b : a));
      this.free.splice(this.free.indexOf(chosen), 1);
      return Promise.resolve(chosen);
    }
    if (this.context.sequencesLeft > 0) {
      const sequence = this.context.getSequence();
      this.ids.set(sequence, this.ids.size);
      return Promise.resolve(sequence);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  give(sequence: LlamaContextSequence): void {
    const next = this.waiting.shift();
    if (next) next(sequence);
    else this.free.push(sequence);
  }
}

/**
 * Holds each decoding request's next token until every decoding request has its own, so that
 * their next decodes are queued in the same tick and node-llama-cpp batches them together.
 * Left alone, each request queues as soon as its own sampling finishes; the first one's decode
 * then starts alone, the others queue while it runs, and the requests stay out of step for good
 * (two streams measured here never once shared a batch). A request joins after its first token,
 * so a prompt being read never holds the others.
 */
class DecodeStep {
  private members = 0;
  private held: (() => void)[] = [];

  join(): void {
    this.members++;
  }

  leave(): void {
    this.members--;
    this.releaseWhenAllArrived();
  }

  /** Resolves once every member has its token for this step. */
  arrive(): Promise<void> {
    const released = new Promise<void>((resolve) => this.held.push(resolve));
    this.releaseWhenAllArrived();
    return released;
  }

  private releaseWhenAllArrived(): void {
    if (this.held.length === 0 || this.held.length < this.members) return;
    const held = this.held;
    this.held = [];
    for (const release of held) release();
  }
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

export class LlamaEngine implements PromptTokenizer {
  private readonly pool: SequencePool;
  private readonly step = new DecodeStep();
  private readonly template: Template | null;
  private readonly specials: { bosToken: string | null; eosToken: string | null };
  /** Control tokens by their text, for the ones a request keeps in its output (keepSpecialTokens). */
  private readonly controlIds = new Map<string, number>();
  /** llama.cpp grammars for the output formats requests asked for, by format. */
  private readonly grammars = new Map<string, Promise<LlamaGrammar>>();

  private constructor(
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly text: TokenBytesTable,
    header: GgufHeader,
    readonly info: LoadResult,
  ) {
    this.pool = new SequencePool(context);
    const template = header.metadata.get('tokenizer.chat_template');
    this.template = typeof template === 'string' ? new Template(template) : null;
    const tokens = stringArray(header, 'tokenizer.ggml.tokens');
    const tokenAt = (key: string): string | null => {
      const id = header.metadata.get(key);
      return typeof id === 'number' ? (tokens[id] ?? null) : null;
    };
    this.specials = { bosToken: tokenAt('tokenizer.ggml.bos_token_id'), eosToken: tokenAt('tokenizer.ggml.eos_token_id') };
    const types = (header.metadata.get('tokenizer.ggml.token_type') as number[] | undefined) ?? [];
    tokens.forEach((token, id) => {
      if (types[id] === CONTROL_TOKEN) this.controlIds.set(token, id);
    });
  }

  /** `threadPoolAddon`: the persistent CPU thread pool, loaded before llama.cpp's backends where it is built. */
  static async load(spec: LoadSpec, telemetry: Telemetry, threadPoolAddon: string): Promise<LlamaEngine> {
    const started = performance.now();
    const header = readGgufHeader(spec.path, true);
    const threadPool = loadThreadPool(threadPoolAddon);
    const llama = await llamaRuntime();
    let model: LlamaModel;
    try {
      model = await llama.loadModel({ modelPath: spec.path });
    } catch (error) {
      throw new ServeError('model_load_failed', `llama.cpp could not load ${spec.path}: ${(error as Error).message}`);
    }
    const shape = spec.llamaContext;
    if (!shape) throw new ServeError('internal_error', `no llama.cpp context size was given for ${spec.name}`);
    const { threads, adaptive } = computeThreads(llama);
    const context = await model
      .createContext({ contextSize: shape.contextSize, sequences: shape.sequences, threads })
      .catch(async (error: unknown) => {
        await model.dispose();
        throw new ServeError('insufficient_memory', `llama.cpp could not create a context for ${spec.name}: ${(error as Error).message}`);
      });
    LlamaBatches.install(context, telemetry, { maxThreads: threads, adaptive, threadPool: typeof threadPool === 'string' ? null : threadPool });
    telemetry.write('modelBytes', model.size);
    const info: LoadResult = {
      name: spec.name,
      placement: 'native',
      // llama.cpp computes with the weights as the file stores them.
      weights: { placement: 'native', dtype: describeGguf(spec.path).quantization, converted: [] },
      modelType: String(header.metadata.get('general.architecture') ?? 'unknown'),
      bytes: model.size,
      loadMs: performance.now() - started,
      contextLength: context.contextSize,
      sequences: context.totalSequences,
    };
    return new LlamaEngine(model, context, vocabularyText(header), header, info);
  }

  encode(text: string, addSpecialTokens: boolean): number[] {
    const ids = [...this.model.tokenize(text, true)];
    const bos = this.model.tokens.bos;
    if (addSpecialTokens && this.model.tokens.shouldPrependBosToken && bos !== null && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }

  applyChatTemplate(messages: ChatMessage[], tools?: unknown[], templateArgs?: Record<string, unknown>): string {
    return renderChatTemplate(this.template, this.specials, messages, tools, templateArgs);
  }

  /**
   * An output format (a JSON schema, or a required tool call's markers around its arguments) as
   * a llama.cpp grammar, which masks every token that would break it.
   */
  private grammar(format: OutputFormat): Promise<LlamaGrammar> {
    const key = JSON.stringify(format);
    let grammar = this.grammars.get(key);
    if (!grammar) {
      grammar = llamaRuntime()
        .then(async (llama) => llama.createGrammar({ grammar: await outputFormatGbnf(llama, format) }))
        .catch((error: unknown) => {
          this.grammars.delete(key);
          if (error instanceof ServeError) throw error;
          throw new ServeError('unsupported', `llama.cpp cannot constrain output to this format: ${(error as Error).message}`);
        });
      this.grammars.set(key, grammar);
    }
    return grammar;
  }

  /** Runs one request to its end; its events go to `port`, as the MLX engine's do. */
  async generate(request: GenerationRequest, slot: number, port: MessagePort, telemetry: Telemetry, cancelFlags: CancelFlags): Promise<void> {
    // node-llama-cpp brands its token ids; ours are the same numbers, checked against the vocabulary.
    const ids = promptIdsInWorker(this, request.prompt, telemetry) as Token[];
    validatePrompt(ids, request, { contextLength: this.context.contextSize, vocabSize: this.text.size });
    const grammar = request.format ? await this.grammar(request.format) : null;
    const sequence = await this.pool.take(ids);
    try {
      // Keep the KV state of the prefix this prompt shares with the sequence's last one; at
      // least one prompt token is evaluated, so that its logits give the first new token.
      const reused = Math.min(commonPrefix(sequence.contextTokens, ids), ids.length - 1);
      if (reused < sequence.nextTokenIndex) await sequence.eraseContextTokenRanges([{ start: reused, end: sequence.nextTokenIndex }]);
      const stream = new TokenStream({
        request,
        promptLength: ids.length,
        cachedTokens: reused,
        isEos: (token) => this.model.isEogToken(token as Token),
        contextLength: this.context.contextSize,
        tokenText: this.text,
        keptSpecial: new Set((request.keepSpecialTokens ?? []).flatMap((token) => this.controlIds.get(token) ?? [])),
        port,
        telemetry,
      });
      if (cancelFlags.isSet(slot)) return stream.finish('cancelled');
      let decoding = false;
      const options = this.samplingOptions(request, ids, stream);
      if (grammar) options.grammarEvaluationState = new LlamaGrammarEvaluationState({ model: this.model, grammar });
      try {
        for await (const token of sequence.evaluate(ids.slice(reused), options)) {
          if (!decoding) {
            stream.promptDone();
            this.step.join();
            decoding = true;
          }
          if (cancelFlags.isSet(slot)) stream.finish('cancelled');
          else stream.accept(token);
          if (stream.finished) break;
          await this.step.arrive();
        }
      } finally {
        if (decoding) this.step.leave();
      }
      stream.finish('stop');
    } finally {
      this.pool.give(sequence);
    }
  }

  private samplingOptions(request: GenerationRequest, ids: Token[], stream: TokenStream): SequenceEvaluateOptions {
    const { temperature, topP, topK, minP, repetitionPenalty, repetitionContextSize, seed } = request.sampling;
    const window = Math.min(repetitionContextSize, this.context.contextSize);
    return {
      temperature,
      topP,
      topK,
      minP,
      seed: seed ?? Math.floor(Math.random() * 2 ** 31),
      yieldEogToken: true,
      // As the MLX sampler: the recent generated tokens, or the prompt's before any is generated.
      ...(repetitionPenalty !== 1
        ? { repeatPenalty: { penalty: repetitionPenalty, maxPunishTokens: window, punishTokens: () => (stream.history.length > 0 ? (stream.history as Token[]) : ids).slice(-window) } }
        : {}),
    };
  }

  async dispose(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
  }
}
