/**
 * What loading a model will cost, read from the safetensors headers before anything is loaded,
 * so a model that does not fit is refused with a clear error instead of the OS killing the server.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import type { LlamaContextShape, WeightPlacement } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';
import { ggufFiles, isGgufPath, readGgufHeader } from '../../core/gguf/format.ts';
import { readOptionalJson, weightFiles } from '../../core/model-folder.ts';

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1 };
/** fp16/bf16 tensors are computed in fp32 on a CPU device (node-mlx 0.0.7 has no fp16 matmul there). */
const CPU_UPCAST = new Set(['F16', 'BF16']);
/** Tokenizer tables, the worker's heap and MLX's temporaries, measured on the built-in model. */
const RUNTIME_BYTES = 160 * 1024 * 1024;
/**
 * The engine's prompt tokenizer thread (src/engine/prompt-tokenizer.ts) holds a second copy of an
 * MLX model's tokenizer: ~155 MB of resident memory for the built-in model's 11 MB tokenizer.json
 * (measured from /proc, after a full collection in that thread), so 14 bytes for each byte of it.
 */
const PROMPT_TOKENIZER_BYTES_PER_FILE_BYTE = 14;
/** For a model whose tokenizer.json is not on disk yet (the built-in model before its first load): the built-in model's. */
const PROMPT_TOKENIZER_DEFAULT_BYTES = 160 * 1024 * 1024;

function promptTokenizerBytes(dir: string): number {
  const file = join(dir, 'tokenizer.json');
  return existsSync(file) ? statSync(file).size * PROMPT_TOKENIZER_BYTES_PER_FILE_BYTE : PROMPT_TOKENIZER_DEFAULT_BYTES;
}
/**
 * The worker's KV cache grows its buffers by this many positions at a time (workers/architectures/
 * kv-cache.ts), so a sequence holds its length rounded up to it; the smallest KV budget a load accepts.
 */
export const KV_ALLOCATION_TOKENS = 256;

interface TensorHeader {
  dtype: string;
  shape: number[];
}

function safetensorsHeader(file: string): Record<string, TensorHeader> {
  const fd = openSync(file, 'r');
  try {
    const size = Buffer.alloc(8);
    readSync(fd, size, 0, 8, 0);
    const length = Number(size.readBigUInt64LE(0));
    if (length <= 0 || length > 100 * 1024 * 1024) throw new Error(`implausible header length ${length}`);
    const header = Buffer.alloc(length);
    readSync(fd, header, 0, length, 8);
    const parsed = JSON.parse(header.toString('utf8')) as Record<string, TensorHeader>;
    delete parsed.__metadata__;
    return parsed;
  } catch (error) {
    throw new ServeError('model_load_failed', `cannot read safetensors header of ${file}: ${(error as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/** config.json's numbers that size a model; empty for a model not yet on disk. */
type SizingConfig = Record<string, number | undefined> & { quantization?: { bits?: number }; torch_dtype?: string; hidden_act?: string; hidden_activation?: string; text_config?: SizingConfig };

/**
 * A GGUF file's header holds the same numbers under its architecture's keys. llama.cpp keeps
 * its KV cache in fp16 on every device, hence kv_value_bytes.
 */
function ggufSizingConfig(file: string): SizingConfig {
  if (!existsSync(file)) return {};
  const { metadata } = readGgufHeader(file);
  const arch = String(metadata.get('general.architecture') ?? '');
  const number = (key: string): number | undefined => {
    const value = metadata.get(`${arch}.${key}`);
    return typeof value === 'number' ? value : typeof value === 'bigint' ? Number(value) : undefined;
  };
  return {
    num_hidden_layers: number('block_count'),
    num_attention_heads: number('attention.head_count'),
    num_key_value_heads: number('attention.head_count_kv'),
    head_dim: number('attention.key_length'),
    hidden_size: number('embedding_length'),
    intermediate_size: number('feed_forward_length'),
    kv_value_bytes: 2,
  };
}

/** A multimodal checkpoint (Gemma 3) keeps its language model's numbers under text_config. */
function sizingConfig(dir: string): SizingConfig {
  if (isGgufPath(dir)) return ggufSizingConfig(dir);
  const config: SizingConfig = readOptionalJson<SizingConfig>(join(dir, 'config.json'), 'config.json');
  return { ...config, ...config.text_config };
}

/**
 * Bytes of keys and values one token adds to a sequence's cache: every layer keeps a key and a
 * value per KV head (sliding-window layers too: the worker's cache keeps every position and
 * masks the window). On a CPU they are fp32 (node-mlx 0.0.7 computes fp16/bf16 in fp32 there).
 */
function kvBytesPerToken(config: SizingConfig, onCpu: boolean): number {
  const heads = config.num_attention_heads ?? 1;
  const kvHeads = config.num_key_value_heads ?? heads;
  const headDim = config.head_dim ?? (config.hidden_size ?? 0) / heads;
  const dtypeBytes = config.kv_value_bytes ?? (onCpu || config.torch_dtype === 'float32' ? 4 : 2);
  return (config.num_hidden_layers ?? 0) * 2 * kvHeads * headDim * dtypeBytes;
}

/**
 * What one prefill step's activations hold: every layer's MLP products and hidden-size arrays for
 * `chunk` tokens. node-mlx frees an array only once V8 has collected its JS wrapper and the event
 * loop has run the native finalizer, which the worker lets happen between steps, so a step holds
 * all its layers' at once. Measured on the 0.5B-shaped fp32 model: 3.3-3.4 MB a token over 24
 * layers (32, 128 and 256-token passes), ~34,000 floats a token a layer. That is the gated SiLU
 * MLP's five intermediate-size arrays (gate, up, sigmoid, SiLU, gated product) and about ten
 * hidden-size ones; the GELU forms build more intermediates.
 */
function activationBytes(config: SizingConfig, chunk: number): number {
  const hidden = config.hidden_size ?? 0;
  const intermediate = config.intermediate_size ?? 4 * hidden;
  const mlpArrays = /gelu/.test(config.hidden_act ?? config.hidden_activation ?? '') ? 12 : 5;
  return (config.num_hidden_layers ?? 0) * chunk * (mlpArrays * intermediate + 10 * hidden) * 4;
}

interface TensorCounts {
  /** Bytes of every tensor as the device will hold it. */
  nativeBytes: number;
  /** Bytes with quantized matrices dequantized to fp32 (their scales and biases dropped). */
  dequantizedBytes: number;
  /** Parameters, counting what a quantized matrix holds once unpacked. */
  parameters: number;
}

function countTensors(dir: string, config: SizingConfig, onCpu: boolean): TensorCounts {
  const counts: TensorCounts = { nativeBytes: 0, dequantizedBytes: 0, parameters: 0 };
  const quantizedBits = config.quantization?.bits ?? 4;
  for (const file of weightFiles(dir)) {
    if (!existsSync(file)) continue;
    const header = safetensorsHeader(file);
    for (const [name, tensor] of Object.entries(header)) {
      const count = tensor.shape.reduce((a, b) => a * b, 1);
      const bytes = count * (onCpu && CPU_UPCAST.has(tensor.dtype) ? 4 : (DTYPE_BYTES[tensor.dtype] ?? 4));
      counts.nativeBytes += bytes;
      const prefix = name.replace(/\.(weight|scales|biases)$/, '');
      if (header[`${prefix}.scales`] === undefined) {
        counts.dequantizedBytes += bytes;
        counts.parameters += count;
      } else if (name.endsWith('.weight')) {
        const unpacked = count * (32 / quantizedBits);
        counts.dequantizedBytes += unpacked * 4;
        counts.parameters += unpacked;
      }
    }
  }
  return counts;
}

export const parameterCount = (dir: string): number => countTensors(dir, sizingConfig(dir), true).parameters;

/** Bytes the loaded model will hold: as stored, and with its quantized matrices dequantized to fp32. */
export function estimateLoadBytes(dir: string, onCpu: boolean): Record<WeightPlacement, number> {
  // A GGUF file is held as stored (llama.cpp maps it); its KV cache is counted by kvBudget.
  if (isGgufPath(dir)) {
    const bytes = ggufFiles(dir).reduce((sum, file) => sum + (existsSync(file) ? statSync(file).size : 0), RUNTIME_BYTES);
    return { native: bytes, dequantized: bytes };
  }
  const config = sizingConfig(dir);
  const counts = countTensors(dir, config, onCpu);
  const runtime = RUNTIME_BYTES + promptTokenizerBytes(dir);
  return { native: counts.nativeBytes + runtime, dequantized: counts.dequantizedBytes + runtime };
}

export function availableMemoryBytes(): number {
  try {
    const match = /MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (match) return Number(match[1]) * 1024;
  } catch {
    // not Linux: fall through to what the OS reports as free
  }
  return freemem();
}

/**
 * `--weights`: auto picks dequantized fp32 matrices on a CPU when they fit (BLAS runs them far
 * faster than node-mlx's CPU quantized kernel), native otherwise; on a GPU it keeps them as stored,
 * as mlx-lm does (Metal's quantized kernels are fast and the weights stay small).
 */
export type WeightsPolicy = 'auto' | 'native' | 'fp32';

export interface MemoryBudget {
  /** Kept free for everything else on the machine (--memory-reserve). */
  reserveBytes: number;
  /** At most this much is assumed available to the whole process, e.g. a container's limit (--memory-limit; 0: none). */
  limitBytes: number;
  /** Held by finished sequences' KV state kept for reuse (--prompt-cache-bytes). */
  promptCacheBytes: number;
  /** Prompt tokens one prefill step runs at once (--prefill-chunk); see activationBytes. */
  prefillChunk: number;
}

/** What running sequences' KV caches may hold together, and how it was derived (for the messages that quote it). */
export interface KvBudget {
  bytesPerToken: number;
  budgetBytes: number;
  /** Memory the load could count on: the machine's available memory, or --memory-limit less what the process already holds. */
  availableBytes: number;
  /** Weights, runtime and one prefill step's activations, as estimated before the load. */
  modelBytes: number;
  reserveBytes: number;
  promptCacheBytes: number;
}

/**
 * What a load may use: on a GPU, the device's recommended working set (what Metal can keep
 * resident; the OS's free memory says little on macOS, which keeps most memory busy as cache);
 * on a CPU, the OS's available memory. --memory-limit, which counts what the process already
 * holds, caps either.
 */
function memoryForLoad(memory: MemoryBudget, gpuWorkingSetBytes: number): { available: number; what: string } {
  const [device, what] = gpuWorkingSetBytes > 0 ? [gpuWorkingSetBytes, "the GPU's recommended working set"] : [availableMemoryBytes(), 'available'];
  if (memory.limitBytes <= 0) return { available: device, what };
  const underLimit = memory.limitBytes - process.memoryUsage.rss();
  return underLimit < device ? { available: underLimit, what: 'available under --memory-limit' } : { available: device, what };
}

export interface LoadPlan {
  placement: WeightPlacement;
  estimatedBytes: number;
  /** Memory the load could count on, measured before it; the KV budget is what the model leaves of it (kvBudget). */
  availableBytes: number;
}

const gib = (n: number): string => (n / 2 ** 30).toFixed(2);

/** One line that says where a KV budget comes from, for error messages and the log. */
export function describeKvBudget(kv: KvBudget): string {
  return `${gib(kv.availableBytes)} GiB available, less ${gib(kv.modelBytes)} GiB of weights, runtime and prefill activations, ${gib(kv.reserveBytes)} GiB --memory-reserve and ${gib(kv.promptCacheBytes)} GiB --prompt-cache-bytes`;
}

const onCpuDevice = (): boolean => !(process.platform === 'darwin' && process.arch === 'arm64');

/** The KV budget left by a model held as `placement`, out of `availableBytes` measured before its load. */
export function kvBudget(dir: string, placement: WeightPlacement, availableBytes: number, memory: MemoryBudget): KvBudget {
  const onCpu = onCpuDevice();
  const config = sizingConfig(dir);
  const modelBytes = estimateLoadBytes(dir, onCpu)[placement] + activationBytes(config, memory.prefillChunk);
  const { reserveBytes, promptCacheBytes } = memory;
  const budgetBytes = availableBytes - reserveBytes - promptCacheBytes - modelBytes;
  return { bytesPerToken: kvBytesPerToken(config, onCpu), budgetBytes, availableBytes, modelBytes, reserveBytes, promptCacheBytes };
}

/**
 * How to hold the model and what its sequences' KV caches may hold, refused with a clear error
 * when even the smallest way would not leave room for one cache allocation. A model not yet on
 * disk (the built-in one before its first use) counts as the runtime alone, which is why the
 * KV budget is worked out after the load (kvBudget). `gpuWorkingSetBytes` is what the worker read
 * from MLX's deviceInfo(); 0 when MLX runs on the CPU.
 */
export function planLoad(name: string, dir: string, policy: WeightsPolicy, memory: MemoryBudget, gpuWorkingSetBytes: number): LoadPlan {
  const onCpu = gpuWorkingSetBytes <= 0;
  const config = sizingConfig(dir);
  const activations = activationBytes(config, memory.prefillChunk);
  const estimates = estimateLoadBytes(dir, onCpu);
  const { available, what } = memoryForLoad(memory, gpuWorkingSetBytes);
  const { reserveBytes, promptCacheBytes } = memory;
  const minimumKv = kvBytesPerToken(config, onCpu) * KV_ALLOCATION_TOKENS;
  const room = available - reserveBytes - promptCacheBytes - activations - minimumKv;
  const wanted: WeightPlacement = isGgufPath(dir)
    ? 'native'
    : policy === 'fp32' ? 'dequantized' : policy === 'native' || !onCpu ? 'native' : estimates.dequantized <= room ? 'dequantized' : 'native';
  const estimatedBytes = estimates[wanted];
  if (estimatedBytes > room) {
    throw new ServeError('insufficient_memory',
      `model '${name}' needs about ${gib(estimatedBytes)} GiB (${wanted === 'native' ? 'weights as stored' : 'weights dequantized to fp32'}) plus ${gib(activations)} GiB for a prefill step's activations and ${gib(minimumKv)} GiB for one sequence's KV cache, but only ${gib(available)} GiB is ${what}, ${gib(reserveBytes)} GiB is kept in reserve (--memory-reserve) and ${gib(promptCacheBytes)} GiB is set aside for the prompt cache (--prompt-cache-bytes)`,
    );
  }
  return { placement: wanted, estimatedBytes, availableBytes: available };
}

/** A llama.cpp sequence keeps at least this many KV cells (or all a sequence may get, --gguf-context or the trained context, if shorter) before the context gives up sequences. */
export const LLAMA_MIN_SEQUENCE_CONTEXT = 2048;

/**
 * llama.cpp allocates a context's KV cache when it creates it, so a GGUF model's context is sized
 * up front: `maxBatch` sequences of `perSequence` tokens each (--gguf-context; 0 or more than the
 * model's trained context: the trained context), shortened (in whole KV_ALLOCATION_TOKENS steps)
 * to share the KV budget; when that would leave a sequence under LLAMA_MIN_SEQUENCE_CONTEXT cells,
 * fewer sequences of that length instead. The cap is there because the whole trained context is
 * costly up front: 16 sequences of a 0.5B model's 32768 tokens are 6 GiB of KV, allocated at load.
 */
export function llamaContextShape(kv: KvBudget, trainContext: number, maxBatch: number, perSequence: number): LlamaContextShape {
  const longest = perSequence > 0 ? Math.min(perSequence, trainContext) : trainContext;
  const tokens = kv.bytesPerToken > 0 ? Math.floor(kv.budgetBytes / kv.bytesPerToken) : Number.POSITIVE_INFINITY;
  const shortest = Math.min(longest, LLAMA_MIN_SEQUENCE_CONTEXT);
  const sequences = Math.max(1, Math.min(maxBatch, Math.floor(tokens / shortest)));
  const shared = Math.floor(tokens / sequences / KV_ALLOCATION_TOKENS) * KV_ALLOCATION_TOKENS;
  return { contextSize: Math.max(Math.min(KV_ALLOCATION_TOKENS, longest), Math.min(longest, shared)), sequences };
}
