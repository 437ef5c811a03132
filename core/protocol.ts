/** What crosses the thread boundary between the engine (main thread) and the MLX worker. */
import type { MessagePort } from 'node:worker_threads';
import type { ServeErrorShape } from './errors.ts';
import type { DeviceMemorySettings, DeviceRelease } from './device-memory.ts';
import type { TelemetryBuffers } from './telemetry.ts';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
  reasoning_content?: string;
}

export type PromptInput =
  | { kind: 'text'; text: string; addSpecialTokens: boolean }
  | { kind: 'tokens'; ids: number[] }
  | { kind: 'chat'; messages: ChatMessage[]; tools?: unknown[]; templateArgs?: Record<string, unknown> };

export interface SamplingParams {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  repetitionContextSize: number;
  seed: number | null;
}

/** A JSON Schema, as the API checked it (only the subset the grammar compiler honours). */
export type JsonSchema = Record<string, unknown>;

/**
 * What the output must be, enforced token by token (constrained decoding): JSON matching a
 * schema, fixed text, or a sequence or choice of these (a tool call is its family's fixed markers
 * around JSON). `closed`: objects may hold only the properties the schema lists.
 */
export type OutputFormat =
  | { type: 'json'; schema: JsonSchema; closed: boolean }
  | { type: 'text'; value: string }
  | { type: 'sequence'; elements: OutputFormat[] }
  | { type: 'or'; elements: OutputFormat[] };

/** The one internal request every API shape is translated into. */
export interface GenerationRequest {
  id: string;
  model: string;
  prompt: PromptInput;
  /**
   * Tokens to generate at most: a number the client asked for; 'context' until the context is
   * full (Ollama's negative num_predict); null when the client set no limit, which the engine
   * turns into the server's --default-max-tokens before the worker sees it. The context length
   * bounds every one of them.
   */
  maxTokens: number | 'context' | null;
  /**
   * Set when maxTokens is the server's --default-max-tokens, not the client's: a prompt that leaves
   * less room than that in the context shortens it rather than being refused, or every request
   * without a limit would be refused by a context under --default-max-tokens (--gguf-context).
   */
  defaultLimit?: boolean;
  sampling: SamplingParams;
  stop: string[];
  ignoreEos: boolean;
  /** Absent: any text. */
  format?: OutputFormat;
  /** Special tokens that stay in the text (a family's tool-call marker such as `[TOOL_CALLS]`). */
  keepSpecialTokens?: string[];
}

/** How quantized matrices are held: as stored, or dequantized once at load to the compute dtype. */
export type WeightPlacement = 'native' | 'dequantized';

export interface ModelSource {
  name: string;
  path: string;
  builtin: boolean;
}

/** The weights as the loaded model holds them: what the status reports, whatever --weights asked for. */
export interface HeldWeights {
  /** 'dequantized' when quantized matrices were expanded at load; 'native' when they (or a model with none) are held as stored. */
  placement: WeightPlacement;
  /** The dtype float weights are held and computed in. */
  dtype: string;
  /** Each conversion made at load, e.g. "8-bit to float32" or "bfloat16 to float32"; empty when every tensor is held as stored. */
  converted: string[];
}

/** A llama.cpp context's shape: KV cells each sequence holds, and sequences decoded together. */
export interface LlamaContextShape {
  contextSize: number;
  sequences: number;
}

/** A model as the worker is to load it. */
export interface LoadSpec extends ModelSource {
  placement: WeightPlacement;
  /** GGUF models only: the context llama.cpp allocates up front, sized from the KV budget (llamaContextShape). */
  llamaContext?: LlamaContextShape;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerationStats {
  finishReason: FinishReason;
  promptTokens: number;
  /** Prompt tokens served from the prompt cache instead of being prefilled. */
  cachedTokens: number;
  completionTokens: number;
  promptMs: number;
  decodeMs: number;
}

export type StreamEvent =
  | { type: 'started'; promptTokens: number; cachedTokens: number }
  /** `tokens`: how many tokens the sequence has generated so far. */
  | { type: 'text'; text: string; tokens: number }
  | ({ type: 'done' } & GenerationStats)
  | { type: 'error'; error: ServeErrorShape };

export interface LoadResult {
  name: string;
  /** What the load was asked for (the worker keeps the model while later tasks ask the same). */
  placement: WeightPlacement;
  weights: HeldWeights;
  modelType: string;
  bytes: number;
  loadMs: number;
  contextLength: number;
  /** Sequences decoded together: --max-batch for MLX, the llama.cpp context's sequences for GGUF. */
  sequences: number;
}

/** The engine loads a model before it sends any generation for it; a generation runs on the model loaded. */
export type WorkerTask =
  /** Run once by each fresh worker before any model (workers/runtime-check.ts). */
  | { op: 'check' }
  | { op: 'load'; model: LoadSpec }
  /** Run before the worker ends: drops the model, collects, and empties MLX's buffer cache. */
  | { op: 'release' }
  | { op: 'generate'; request: GenerationRequest; slot: number; port: MessagePort };

export type WorkerReply = { ok: true; load?: LoadResult; release?: DeviceRelease } | { ok: false; error: ServeErrorShape };

/** Fixed for the worker's life. */
export interface WorkerSettings extends DeviceMemorySettings {
  /** Sequences decoded together in one forward pass; the rest wait their turn. */
  maxBatch: number;
  /** Prompt tokens prefilled per round, so a long prompt does not stall running streams. */
  prefillChunk: number;
  /** Bound on the KV state kept for reuse by later requests sharing a prefix. */
  promptCacheBytes: number;
  /** The persistent llama.cpp CPU thread pool's addon (native/ggml-threadpool.c), where it is built. */
  threadPoolAddon: string;
  /** Nice value of every thread but the main one (workers/engine-priority.ts); 0 leaves them. */
  engineNice: number;
}

/** Piscina's workerData: the settings and the shared memory both threads map, handed over once. */
export interface WorkerData {
  settings: WorkerSettings;
  telemetry: TelemetryBuffers;
  cancelFlags: SharedArrayBuffer;
}

/** A prompt for the prompt tokenizer's thread (workers/prompt-tokenizer.ts) to turn into ids; none: only read the tokenizer (the start). */
export interface PromptTokenizerTask {
  prompt?: Exclude<PromptInput, { kind: 'tokens' }>;
}

export type PromptTokenizerReply = { ok: true; ids: number[] } | { ok: false; error: ServeErrorShape };
