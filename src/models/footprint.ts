/**
 * What loading a model will cost, read from the safetensors headers before anything is loaded,
 * so a model that does not fit is refused with a clear error instead of the OS killing the server.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
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

function weightFiles(dir: string): string[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    const { weight_map: map } = JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> };
    return [...new Set(Object.values(map))].map((file) => join(dir, file));
  }
  return [join(dir, 'model.safetensors')];
}

function kvCacheBytes(dir: string): number {
  if (!existsSync(join(dir, 'config.json'))) return 0;
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, number | undefined>;
  const heads = config.num_attention_heads ?? 1;
  const kvHeads = config.num_key_value_heads ?? heads;
  const headDim = config.head_dim ?? (config.hidden_size ?? 0) / heads;
  const tokens = Math.min(config.max_position_embeddings ?? KV_CACHE_TOKENS, KV_CACHE_TOKENS);
  return (config.num_hidden_layers ?? 0) * 2 * kvHeads * headDim * 4 * tokens;
}

export function estimateLoadBytes(dir: string, onCpu: boolean): number {
  let weights = 0;
  for (const file of weightFiles(dir)) {
    if (!existsSync(file)) continue;
    for (const tensor of Object.values(safetensorsHeader(file))) {
      const count = tensor.shape.reduce((a, b) => a * b, 1);
      weights += count * (onCpu && CPU_UPCAST.has(tensor.dtype) ? 4 : (DTYPE_BYTES[tensor.dtype] ?? 4));
    }
  }
  return weights + kvCacheBytes(dir) + RUNTIME_BYTES;
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

/** A model not yet on disk (the built-in one before its first use) is counted as the runtime alone. */
export function assertFits(name: string, dir: string, reserveBytes: number): void {
  const needed = estimateLoadBytes(dir, process.platform !== 'darwin');
  const available = availableMemoryBytes();
  if (needed > available - reserveBytes) {
    const gib = (n: number): string => (n / 2 ** 30).toFixed(2);
    throw new ServeError(
      503,
      'insufficient_memory',
      `model '${name}' needs about ${gib(needed)} GiB but only ${gib(available)} GiB is available and ${gib(reserveBytes)} GiB is kept in reserve (--memory-reserve)`,
    );
  }
}
