/**
 * What loading a model will cost, read from the safetensors headers before anything is loaded,
 * so a model that does not fit is refused with a clear error instead of the OS killing the server.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import type { WeightPlacement } from '../engine/protocol.ts';
import { ServeError } from '../errors.ts';

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1 };
/** fp16/bf16 tensors are computed in fp32 on a CPU device (node-mlx 0.0.7 has no fp16 matmul there). */
const CPU_UPCAST = new Set(['F16', 'BF16']);
/** Tokenizer tables, the worker's heap and MLX's temporaries, measured on the built-in model. */
const RUNTIME_BYTES = 160 * 1024 * 1024;
const KV_CACHE_TOKENS = 4096;

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
    throw new ServeError(422, 'model_load_failed', `cannot read safetensors header of ${file}: ${(error as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/** The safetensors files of a model folder: the shards its index names, else model.safetensors. */
export function weightFiles(dir: string): string[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) return [join(dir, 'model.safetensors')];
  let map: Record<string, string>;
  try {
    map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
  } catch (error) {
    throw new ServeError(422, 'model_load_failed', `cannot read the safetensors index (${index}): ${(error as Error).message}`);
  }
  return [...new Set(Object.values(map))].map((file) => join(dir, file));
}

/** config.json's numbers that size a model; empty for a model not yet on disk. */
type SizingConfig = Record<string, number | undefined> & { quantization?: { bits?: number } };

function sizingConfig(dir: string): SizingConfig {
  const path = join(dir, 'config.json');
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as SizingConfig) : {};
}

function kvCacheBytes(config: SizingConfig): number {
  const heads = config.num_attention_heads ?? 1;
  const kvHeads = config.num_key_value_heads ?? heads;
  const headDim = config.head_dim ?? (config.hidden_size ?? 0) / heads;
  const tokens = Math.min(config.max_position_embeddings ?? KV_CACHE_TOKENS, KV_CACHE_TOKENS);
  return (config.num_hidden_layers ?? 0) * 2 * kvHeads * headDim * 4 * tokens;
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
  const config = sizingConfig(dir);
  const counts = countTensors(dir, config, onCpu);
  const fixed = kvCacheBytes(config) + RUNTIME_BYTES;
  return { native: counts.nativeBytes + fixed, dequantized: counts.dequantizedBytes + fixed };
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
  /** At most this much is assumed available, e.g. a container's limit (--memory-limit; 0: none). */
  limitBytes: number;
}

/**
 * What a load may use: on a GPU, the device's recommended working set (what Metal can keep
 * resident; the OS's free memory says little on macOS, which keeps most memory busy as cache);
 * on a CPU, the OS's available memory. --memory-limit caps either.
 */
function memoryForLoad(memory: MemoryBudget, gpuWorkingSetBytes: number): { available: number; what: string } {
  const [device, what] = gpuWorkingSetBytes > 0 ? [gpuWorkingSetBytes, 'the GPU\'s recommended working set'] : [availableMemoryBytes(), 'available'];
  if (memory.limitBytes > 0 && memory.limitBytes < device) return { available: memory.limitBytes, what: 'allowed (--memory-limit)' };
  return { available: device, what };
}

export interface LoadPlan {
  placement: WeightPlacement;
  estimatedBytes: number;
}

/**
 * How to hold the model, refused with a clear error when even the smallest way would not fit.
 * A model not yet on disk (the built-in one before its first use) counts as the runtime alone.
 * `gpuWorkingSetBytes` is what the worker read from MLX's deviceInfo(); 0 when MLX runs on the CPU.
 */
export function planLoad(name: string, dir: string, policy: WeightsPolicy, memory: MemoryBudget, gpuWorkingSetBytes: number): LoadPlan {
  const onCpu = gpuWorkingSetBytes <= 0;
  const estimates = estimateLoadBytes(dir, onCpu);
  const { available, what } = memoryForLoad(memory, gpuWorkingSetBytes);
  const reserveBytes = memory.reserveBytes;
  const room = available - reserveBytes;
  const wanted: WeightPlacement =
    policy === 'fp32' ? 'dequantized' : policy === 'native' || !onCpu ? 'native' : estimates.dequantized <= room ? 'dequantized' : 'native';
  const estimatedBytes = estimates[wanted];
  if (estimatedBytes > room) {
    const gib = (n: number): string => (n / 2 ** 30).toFixed(2);
    throw new ServeError(
      503,
      'insufficient_memory',
      `model '${name}' needs about ${gib(estimatedBytes)} GiB (${wanted === 'native' ? 'weights as stored' : 'weights dequantized to fp32'}) but only ${gib(available)} GiB is ${what} and ${gib(reserveBytes)} GiB is kept in reserve (--memory-reserve)`,
    );
  }
  return { placement: wanted, estimatedBytes };
}
