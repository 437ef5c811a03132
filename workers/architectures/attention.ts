/**
 * Attention's shared building blocks: q/k/v projections, the scaled-dot-product kernel, and the
 * two ways a layer attends in a forward pass: over one sequence's own cache (a prompt, or a
 * batch of rows at the same positions), or as one step of the running batch, where every
 * decoding row attends at its own position in one kernel call and newcomers' prompt chunks
 * ride along. Architectures bring their own projections or kernel (Phi-3's fused qkv in
 * phi3.ts, Gemma 2's soft-capped scores in gemma2.ts).
 */
import type { RunningBatch } from './batch-cache.ts';
import type { KVCache } from './kv-cache.ts';
import { Linear, RMSNorm, type Module } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { RotaryEmbedding } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Score scale; 1/sqrt(headDim) when absent (Gemma: 1/sqrt(query_pre_attn_scalar)). */
  scale?: number;
  /** Sliding window: a query sees keys with query_pos - key_pos < window; null: all earlier keys. */
  window?: number | null;
}

/**
 * Additive causal mask for `length` new positions after `offset`, against the keys held from
 * position `keyStart`, limited to the last `window` keys (the query's own included) when a
 * window is given. Undefined when nothing needs hiding: one new position that sees every key held.
 */
export function causalMask(length: number, offset: number, window: number | null = null, keyStart = 0): MxArray | undefined {
  if (length === 1 && (window === null || offset - keyStart < window)) return undefined;
  const rows = mx.expandDims(mx.add(mx.arange(length, mx.int32), offset), 1);
  const cols = mx.expandDims(mx.arange(keyStart, offset + length, 1, mx.int32), 0);
  let allowed = mx.lessEqual(cols, rows);
  if (window !== null) allowed = mx.logicalAnd(allowed, mx.less(mx.subtract(rows, cols), window));
  return mx.where(allowed, mx.array(0, mx.float32), mx.array(-Infinity, mx.float32));
}

/** q, k and v [batch, length, heads, headDim] from the layer's input [batch, length, hidden]. */
export interface QKVProjection extends Module {
  project(x: MxArray, shape: AttentionShape): [MxArray, MxArray, MxArray];
}

/** Separate q, k and v projections, optionally with an RMSNorm over each query and key head (Qwen3, Gemma 3). */
export class SeparateProjections implements QKVProjection {
  constructor(
    private readonly q: Linear,
    private readonly k: Linear,
    private readonly v: Linear,
    private readonly headNorms: [RMSNorm, RMSNorm] | null = null,
  ) {}

  /** `bias`: Qwen2-style biases on all three; `headNorms`: eps and whether they scale by (1 + w). */
  static load(store: WeightStore, prefix: string, bias: boolean, headNorms: { eps: number; unitOffset: boolean } | null = null): SeparateProjections {
    const norm = (name: string, eps: number, unitOffset: boolean): RMSNorm => RMSNorm.load(store, `${prefix}.${name}`, eps, unitOffset);
    return new SeparateProjections(
      Linear.load(store, `${prefix}.q_proj`, bias),
      Linear.load(store, `${prefix}.k_proj`, bias),
      Linear.load(store, `${prefix}.v_proj`, bias),
      headNorms && [norm('q_norm', headNorms.eps, headNorms.unitOffset), norm('k_norm', headNorms.eps, headNorms.unitOffset)],
    );
  }

  project(x: MxArray, shape: AttentionShape): [MxArray, MxArray, MxArray] {
    const [queries, keys, values] = splitHeads([this.q.forward(x), this.k.forward(x), this.v.forward(x)], shape);
    if (!this.headNorms) return [queries, keys, values];
    return [this.headNorms[0].forward(queries), this.headNorms[1].forward(keys), values];
  }

  parameters(): MxArray[] {
    return [this.q, this.k, this.v, ...(this.headNorms ?? [])].flatMap((m) => m.parameters());
  }
}

/** [batch, length, heads * headDim] projections, reshaped per head. */
export function splitHeads([q, k, v]: [MxArray, MxArray, MxArray], { heads, kvHeads, headDim }: AttentionShape): [MxArray, MxArray, MxArray] {
  const [batch, length] = q.shape as [number, number];
  return [q.reshape([batch, length, heads, headDim]), k.reshape([batch, length, kvHeads, headDim]), v.reshape([batch, length, kvHeads, headDim])];
}

/**
 * Attention weights and weighted values for rotated queries [batch, heads, length, headDim]
 * against keys and values [batch, kvHeads, keys, headDim]; `mask` is additive, [length, keys]
 * or one per row [batch, 1, length, keys].
 */
export type AttentionKernel = (queries: MxArray, keys: MxArray, values: MxArray, scale: number, mask: MxArray | undefined) => MxArray;

/** Grouped-query heads see their key head through an extra axis, so a per-row mask needs one too. */
export function groupedMask(mask: MxArray | undefined, heads: number, kvHeads: number): MxArray | undefined {
  if (!mask || heads === kvHeads || mask.ndim !== 4) return mask;
  return mx.expandDims(mask, 2);
}

export const scaledDotProduct: AttentionKernel = (queries, keys, values, scale, mask) =>
  mx.fast.scaledDotProductAttention(queries, keys, values, scale, groupedMask(mask, queries.shape[1] as number, keys.shape[1] as number));

/** One layer's attention: projections, RoPE, the kernel over the layer's cache, output projection. */
export class Attention implements Module {
  readonly window: number | null;
  private readonly scale: number;

  constructor(
    readonly shape: AttentionShape,
    readonly rope: RotaryEmbedding,
    private readonly projection: QKVProjection,
    private readonly output: Linear,
    private readonly kernel: AttentionKernel = scaledDotProduct,
  ) {
    this.window = shape.window ?? null;
    this.scale = shape.scale ?? shape.headDim ** -0.5;
  }

  /** With the output projection `o_proj` under `prefix`. */
  static load(store: WeightStore, prefix: string, shape: AttentionShape, rope: RotaryEmbedding, projection: QKVProjection, kernel?: AttentionKernel): Attention {
    return new Attention(shape, rope, projection, Linear.load(store, `${prefix}.o_proj`), kernel);
  }

  forward(x: MxArray, context: AttentionContext): MxArray {
    const [batch, length] = x.shape as [number, number];
    const attended = context.attend(this, ...this.projection.project(x, this.shape));
    return this.output.forward(attended.reshape([batch, length, this.shape.heads * this.shape.headDim]));
  }

  /** The kernel on rotated queries and cached keys, both [batch, heads, positions, headDim]. */
  attendRotated(queries: MxArray, keys: MxArray, values: MxArray, mask: MxArray | undefined): MxArray {
    return this.kernel(queries, keys, values, this.scale, mask);
  }

  parameters(): MxArray[] {
    return [this.projection, this.output].flatMap((m) => m.parameters());
  }
}

/** Where one layer's queries, keys and values [batch, length, heads, headDim] go in this forward pass. */
export interface AttentionContext {
  attend(layer: Attention, queries: MxArray, keys: MxArray, values: MxArray): MxArray;
}

const headsFirst = (t: MxArray): MxArray => t.transpose(0, 2, 1, 3);

/** Masks of one forward pass, shared by the layers whose windows and held positions agree. */
export class MaskMemo {
  private readonly masks = new Map<string, MxArray | undefined>();

  get(length: number, offset: number, window: number | null, keyStart: number): MxArray | undefined {
    const key = `${length}:${offset}:${window}:${keyStart}`;
    if (!this.masks.has(key)) this.masks.set(key, causalMask(length, offset, window, keyStart));
    return this.masks.get(key);
  }
}

/** Rows that share positions (one sequence, or equal-length prompts) attending over their own cache. */
export class SequenceAttention implements AttentionContext {
  constructor(
    private readonly cache: KVCache,
    private readonly masks: MaskMemo,
  ) {}

  attend(layer: Attention, queries: MxArray, keys: MxArray, values: MxArray): MxArray {
    const length = queries.shape[1] as number;
    const offset = this.cache.offset;
    const [allKeys, allValues] = this.cache.update(layer.rope.apply(headsFirst(keys), offset), headsFirst(values));
    const mask = this.masks.get(length, offset, layer.window, this.cache.start);
    return headsFirst(layer.attendRotated(layer.rope.apply(headsFirst(queries), offset), allKeys, allValues, mask));
  }
}

/** A prompt chunk in a batch step: its tokens follow the decode rows' in the step's one sequence of inputs. */
export interface ChunkAttention {
  length: number;
  context: SequenceAttention;
}

/**
 * One layer of a batch step. The step's inputs are one sequence [1, rows + chunk tokens]: first
 * one token for each running row, then each newcomer's prompt chunk. The rows attend together,
 * each at its own position through the batch's rings; each chunk attends over its own cache.
 */
export class StepAttention implements AttentionContext {
  constructor(
    private readonly batch: RunningBatch | null,
    private readonly layerIndex: number,
    private readonly positions: MxArray | null,
    private readonly chunks: ChunkAttention[],
  ) {}

  attend(layer: Attention, queries: MxArray, keys: MxArray, values: MxArray): MxArray {
    const rows = this.batch?.rows ?? 0;
    const parts: MxArray[] = [];
    const span = (t: MxArray, from: number, to: number): MxArray => t.index(mx.Slice(), mx.Slice(from, to));
    if (this.batch && this.positions && rows > 0) {
      const perRow = (t: MxArray): MxArray => headsFirst(span(t, 0, rows).reshape([rows, 1, t.shape[2] as number, t.shape[3] as number]));
      const written = this.batch.write(this.layerIndex, layer.rope.applyAt(perRow(keys), this.positions), perRow(values));
      const attended = layer.attendRotated(layer.rope.applyAt(perRow(queries), this.positions), written.keys, written.values, written.mask);
      parts.push(headsFirst(attended).reshape([1, rows, layer.shape.heads, layer.shape.headDim]));
    }
    let from = rows;
    for (const chunk of this.chunks) {
      const to = from + chunk.length;
      parts.push(chunk.context.attend(layer, span(queries, from, to), span(keys, from, to), span(values, from, to)));
      from = to;
    }
    return parts.length === 1 ? (parts[0] as MxArray) : mx.concatenate(parts, 1);
  }
}
