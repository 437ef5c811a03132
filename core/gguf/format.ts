/**
 * GGUF version 3, the file format llama.cpp loads (github.com/ggml-org/ggml, docs/gguf.md):
 * a little-endian header (magic, version, tensor count, metadata count), typed key/value
 * metadata, one info record per tensor (name, dimensions fastest-varying first, type, offset),
 * then the tensor data, each tensor aligned to `general.alignment` (32 by default).
 * This module writes such files from float32 tensors and reads their headers back.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { ServeError } from '../errors.ts';

export const isGgufPath = (path: string): boolean => path.toLowerCase().endsWith('.gguf');

/**
 * A model too large for one file is split into parts named as llama.cpp's llama_split_path names
 * them, `<prefix>-00001-of-00003.gguf` and so on, numbered from 1. The first part holds the
 * metadata; llama.cpp loads the others from the first's path.
 */
const SPLIT_PART = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/i;

export const splitPartPath = (prefix: string, part: number, count: number): string => `${prefix}-${String(part).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.gguf`;

/** Where `path` sits in a split model (its part numbered from 1), or null for a file of its own. */
export function ggufSplit(path: string): { prefix: string; part: number; count: number } | null {
  const match = SPLIT_PART.exec(path);
  return match ? { prefix: match[1] as string, part: Number(match[2]), count: Number(match[3]) } : null;
}

/** Whether `path` names a GGUF model: a file of its own, or a split model's first part (not a later part). */
export const startsGgufModel = (path: string): boolean => isGgufPath(path) && (ggufSplit(path)?.part ?? 1) === 1;

/** The files a GGUF model named by `path` is made of: every part for a split model's first part, else `path`. */
export function ggufFiles(path: string): string[] {
  const split = ggufSplit(path);
  return split?.part === 1 ? Array.from({ length: split.count }, (_, i) => splitPartPath(split.prefix, i + 1, split.count)) : [path];
}

/** A GGUF model's name: its file name without `.gguf`, and without the part numbers of a split model. */
export const ggufModelName = (fileName: string): string => (ggufSplit(fileName)?.prefix ?? fileName.replace(/\.gguf$/i, ''));

const QUANTIZATION_WORD = /^(I?Q\d+(_[A-Z0-9]+)*|F16|F32|BF16)$/i;

/**
 * The quantization a GGUF file's name states, upper-cased, as Ollama and llama.cpp's tools name
 * files (`qwen2.5-0.5b-instruct-q4_k_m.gguf` is Q4_K_M): the last dash- or dot-separated word of
 * the name that is one; null when none is.
 */
export function quantizationOfFileName(fileName: string): string | null {
  const words = fileName.replace(/\.gguf$/i, '').split(/[-.]/);
  const found = words.reverse().find((word) => QUANTIZATION_WORD.test(word));
  return found ? found.toUpperCase() : null;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const VERSION = 3;
const ALIGNMENT = 32;

/** Metadata value types, as numbered by the format. */
const enum ValueType {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
}

/** The tensor types this writer produces, numbered as ggml numbers them. */
export type TensorType = 'F32' | 'F16' | 'Q4_0' | 'Q8_0';
const TENSOR_TYPE_IDS: Record<TensorType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 };
/** ggml's names for the type ids, so a header written by anyone reads back with a name. */
const GGML_TYPE_NAMES = ['F32', 'F16', 'Q4_0', 'Q4_1', 'Q4_2', 'Q4_3', 'Q5_0', 'Q5_1', 'Q8_0', 'Q8_1', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_K', 'IQ2_XXS', 'IQ2_XS', 'IQ3_XXS', 'IQ1_S', 'IQ4_NL', 'IQ3_S', 'IQ2_S', 'IQ4_XS', 'I8', 'I16', 'I32', 'I64', 'F64', 'IQ1_M', 'BF16'];

/**
 * `general.file_type`: what most of a file's weights are stored as (llama.cpp's llama_ftype).
 * Listings show it as the model's quantization.
 */
export const FILE_TYPES: Record<number, string> = { 0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 7: 'Q8_0', 8: 'Q5_0', 9: 'Q5_1', 10: 'Q2_K', 11: 'Q3_K_S', 12: 'Q3_K_M', 13: 'Q3_K_L', 14: 'Q4_K_S', 15: 'Q4_K_M', 16: 'Q5_K_S', 17: 'Q5_K_M', 18: 'Q6_K', 32: 'BF16' };
export const FILE_TYPE_OF: Record<TensorType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7 };

export type MetadataValue = number | bigint | boolean | string | MetadataValue[];

/** A metadata entry as written: the value and the type it is stored with. */
export type MetadataEntry =
  | { type: 'u16' | 'u32' | 'i32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'strings'; value: string[] }
  | { type: 'i32s'; value: number[] };

export interface TensorInput {
  name: string;
  /** Row-major shape, as safetensors and numpy give it (slowest-varying first). */
  shape: number[];
  data: Float32Array;
  type: TensorType;
}

const BLOCK = 32;
const encoder = new TextEncoder();

/** float32 -> IEEE half, rounding to nearest even; ggml stores block scales this way. */
function toHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0] as number;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let rounded = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    if (rest > half || (rest === half && rounded & 1)) rounded++;
    return sign | rounded;
  }
  let rounded = mantissa >>> 13;
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && rounded & 1)) {
    rounded++;
    if (rounded === 0x400) {
      rounded = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | rounded;
}

/** C's roundf: halves away from zero. */
const roundAway = (v: number): number => Math.sign(v) * Math.round(Math.abs(v));

/** ggml's reference Q8_0: blocks of 32 as a half scale and 32 signed bytes. */
function quantizeQ8_0(data: Float32Array): Buffer {
  const out = Buffer.alloc((data.length / BLOCK) * 34);
  for (let b = 0; b < data.length / BLOCK; b++) {
    const block = data.subarray(b * BLOCK, (b + 1) * BLOCK);
    const amax = block.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    out.writeUInt16LE(toHalf(d), b * 34);
    for (let j = 0; j < BLOCK; j++) out.writeInt8(roundAway(Math.fround((block[j] as number) * id)), b * 34 + 2 + j);
  }
  return out;
}

/** ggml's reference Q4_0: blocks of 32 as a half scale and 16 bytes of 4-bit values offset by 8. */
function quantizeQ4_0(data: Float32Array): Buffer {
  const out = Buffer.alloc((data.length / BLOCK) * 18);
  for (let b = 0; b < data.length / BLOCK; b++) {
    const block = data.subarray(b * BLOCK, (b + 1) * BLOCK);
    let amax = 0;
    let max = 0;
    for (const v of block) {
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    out.writeUInt16LE(toHalf(d), b * 18);
    const nibble = (v: number): number => Math.min(15, Math.trunc(Math.fround(Math.fround(v * id) + 8.5)));
    for (let j = 0; j < BLOCK / 2; j++) out[b * 18 + 2 + j] = nibble(block[j] as number) | (nibble(block[j + BLOCK / 2] as number) << 4);
  }
  return out;
}

function encodeTensor(tensor: TensorInput): Buffer {
  switch (tensor.type) {
    case 'F32':
      return Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
    case 'F16': {
      const out = Buffer.alloc(tensor.data.length * 2);
      tensor.data.forEach((v, i) => out.writeUInt16LE(toHalf(v), i * 2));
      return out;
    }
    case 'Q8_0':
      return quantizeQ8_0(tensor.data);
    case 'Q4_0':
      return quantizeQ4_0(tensor.data);
  }
}

/** Whether a tensor can be stored as `type`: block types need rows that are whole blocks. */
export function fitsType(shape: number[], type: TensorType): boolean {
  if (type === 'F32' || type === 'F16') return true;
  return shape.length === 2 && (shape[1] as number) % BLOCK === 0;
}

/** Serializes values into one growing list of byte chunks. */
class ByteSink {
  readonly chunks: Buffer[] = [];
  length = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  scalar(size: number, write: (b: Buffer) => void): void {
    const b = Buffer.alloc(size);
    write(b);
    this.push(b);
  }

  u32(v: number): void {
    this.scalar(4, (b) => b.writeUInt32LE(v));
  }

  u64(v: number): void {
    this.scalar(8, (b) => b.writeBigUInt64LE(BigInt(v)));
  }

  string(v: string): void {
    const bytes = Buffer.from(encoder.encode(v));
    this.u64(bytes.length);
    this.push(bytes);
  }
}

function writeEntry(sink: ByteSink, key: string, entry: MetadataEntry): void {
  sink.string(key);
  switch (entry.type) {
    case 'u16':
      sink.u32(ValueType.U16);
      return sink.scalar(2, (b) => b.writeUInt16LE(entry.value));
    case 'u32':
      sink.u32(ValueType.U32);
      return sink.u32(entry.value);
    case 'i32':
      sink.u32(ValueType.I32);
      return sink.scalar(4, (b) => b.writeInt32LE(entry.value));
    case 'f32':
      sink.u32(ValueType.F32);
      return sink.scalar(4, (b) => b.writeFloatLE(entry.value));
    case 'bool':
      sink.u32(ValueType.Bool);
      return sink.scalar(1, (b) => b.writeUInt8(entry.value ? 1 : 0));
    case 'string':
      sink.u32(ValueType.String);
      return sink.string(entry.value);
    case 'strings':
      sink.u32(ValueType.Array);
      sink.u32(ValueType.String);
      sink.u64(entry.value.length);
      for (const s of entry.value) sink.string(s);
      return;
    case 'i32s': {
      sink.u32(ValueType.Array);
      sink.u32(ValueType.I32);
      sink.u64(entry.value.length);
      const b = Buffer.alloc(entry.value.length * 4);
      entry.value.forEach((v, i) => b.writeInt32LE(v, i * 4));
      return sink.push(b);
    }
  }
}

const padding = (offset: number): number => (ALIGNMENT - (offset % ALIGNMENT)) % ALIGNMENT;

/** Writes a GGUF v3 file: the metadata in the order given, then every tensor, aligned. */
export function writeGguf(path: string, metadata: [string, MetadataEntry][], tensors: TensorInput[]): void {
  const header = new ByteSink();
  header.u32(MAGIC);
  header.u32(VERSION);
  header.u64(tensors.length);
  header.u64(metadata.length);
  for (const [key, entry] of metadata) writeEntry(header, key, entry);
  const encoded = tensors.map(encodeTensor);
  let offset = 0;
  tensors.forEach((tensor, i) => {
    header.string(tensor.name);
    header.u32(tensor.shape.length);
    for (const dim of [...tensor.shape].reverse()) header.u64(dim);
    header.u32(TENSOR_TYPE_IDS[tensor.type]);
    header.u64(offset);
    offset += (encoded[i] as Buffer).length;
    offset += padding(offset);
  });
  header.push(Buffer.alloc(padding(header.length)));
  const fd = openSync(path, 'w');
  try {
    for (const chunk of header.chunks) writeSync(fd, chunk);
    for (const data of encoded) {
      writeSync(fd, data);
      writeSync(fd, Buffer.alloc(padding(data.length)));
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a model as `count` GGUF files, as llama.cpp's gguf-split does: the tensors shared out in
 * order, the metadata in the first part, and in every part its index from 0 (`split.no`), the
 * part count and the model's tensor count, which llama.cpp checks. Returns the parts' paths.
 */
export function writeGgufSplit(prefix: string, metadata: [string, MetadataEntry][], tensors: TensorInput[], count: number): string[] {
  if (!Number.isInteger(count) || count < 2 || count > tensors.length) throw new Error(`cannot split ${tensors.length} tensors into ${count} parts`);
  return Array.from({ length: count }, (_, index) => {
    const path = splitPartPath(prefix, index + 1, count);
    const split: [string, MetadataEntry][] = [
      ['split.no', { type: 'u16', value: index }],
      ['split.count', { type: 'u16', value: count }],
      ['split.tensors.count', { type: 'i32', value: tensors.length }],
    ];
    const share = (i: number): number => Math.floor((i * tensors.length) / count);
    writeGguf(path, index === 0 ? [...metadata, ...split] : split, tensors.slice(share(index), share(index + 1)));
    return path;
  });
}

export interface GgufTensorInfo {
  name: string;
  /** Fastest-varying first, as the file stores them. */
  dims: number[];
  type: string;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, MetadataValue>;
  tensors: GgufTensorInfo[];
}

/** Thrown inside the parser when the bytes read so far end mid-header; the caller reads more. */
class NeedMoreBytes extends Error {}

class Cursor {
  private at = 0;
  constructor(private readonly b: Buffer) {}

  private take(size: number): number {
    if (this.at + size > this.b.length) throw new NeedMoreBytes();
    const start = this.at;
    this.at += size;
    return start;
  }

  u32 = (): number => this.b.readUInt32LE(this.take(4));
  u64 = (): number => Number(this.b.readBigUInt64LE(this.take(8)));
  string = (): string => {
    const length = this.u64();
    const start = this.take(length);
    return this.b.toString('utf8', start, start + length);
  };

  value(type: number, keepArrays: boolean): MetadataValue {
    switch (type) {
      case ValueType.U8:
        return this.b.readUInt8(this.take(1));
      case ValueType.I8:
        return this.b.readInt8(this.take(1));
      case ValueType.U16:
        return this.b.readUInt16LE(this.take(2));
      case ValueType.I16:
        return this.b.readInt16LE(this.take(2));
      case ValueType.U32:
        return this.u32();
      case ValueType.I32:
        return this.b.readInt32LE(this.take(4));
      case ValueType.F32:
        return this.b.readFloatLE(this.take(4));
      case ValueType.Bool:
        return this.b.readUInt8(this.take(1)) !== 0;
      case ValueType.String:
        return this.string();
      case ValueType.U64:
        return this.b.readBigUInt64LE(this.take(8));
      case ValueType.I64:
        return this.b.readBigInt64LE(this.take(8));
      case ValueType.F64:
        return this.b.readDoubleLE(this.take(8));
      case ValueType.Array: {
        const itemType = this.u32();
        const count = this.u64();
        const items: MetadataValue[] = [];
        for (let i = 0; i < count; i++) {
          const item = this.value(itemType, keepArrays);
          if (keepArrays) items.push(item);
        }
        return items;
      }
      default:
        throw new Error(`unknown metadata value type ${type}`);
    }
  }
}

function parseHeader(bytes: Buffer, keepArrays: boolean): GgufHeader {
  const c = new Cursor(bytes);
  if (c.u32() !== MAGIC) throw new Error('not a GGUF file (bad magic)');
  const version = c.u32();
  if (version < 2 || version > 3) throw new Error(`GGUF version ${version} is not supported (2 and 3 are)`);
  const tensorCount = c.u64();
  const metadataCount = c.u64();
  const metadata = new Map<string, MetadataValue>();
  for (let i = 0; i < metadataCount; i++) {
    const key = c.string();
    metadata.set(key, c.value(c.u32(), keepArrays));
  }
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string();
    const dims = Array.from({ length: c.u32() }, () => c.u64());
    const typeId = c.u32();
    c.u64();
    tensors.push({ name, dims, type: GGML_TYPE_NAMES[typeId] ?? `type ${typeId}` });
  }
  return { version, metadata, tensors };
}

/**
 * Reads a GGUF file's header (metadata and tensor infos, not the data). With `keepArrays`
 * false, array values (the vocabulary, the merges) are skipped over and read as empty.
 */
export function readGgufHeader(path: string, keepArrays = false): GgufHeader {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    for (let length = Math.min(size, 1 << 20); ; length = Math.min(size, length * 4)) {
      const bytes = Buffer.alloc(length);
      readSync(fd, bytes, 0, length, 0);
      try {
        return parseHeader(bytes, keepArrays);
      } catch (error) {
        if (!(error instanceof NeedMoreBytes) || length === size) throw error instanceof NeedMoreBytes ? new Error('the file ends inside its header') : error;
      }
    }
  } catch (error) {
    throw new ServeError('model_load_failed', `cannot read the GGUF header of ${path}: ${(error as Error).message}`);
  } finally {
    closeSync(fd);
  }
}
