import type { KVCache } from './kv-cache.ts';
import { Linear, RMSNorm, softCap, type Module } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { RotaryEmbedding } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Qwen2-style biases on q, k and v. */
  qkvBias: boolean;
  /** RMSNorm of each query and key head (Qwen3, Gemma 3), eps given. */
  qkNormEps: number | null;
  /** Gemma 3's q/k norms scale by (1 + w). */
  qkNormUnitOffset?: boolean;
  /** Score scale; 1/sqrt(headDim) when absent (Gemma: 1/sqrt(query_pre_attn_scalar)). */
  scale?: number;
  /** Gemma 2's cap * tanh(score / cap) on attention scores before the mask. */
  scoreSoftCap?: number | null;
  /** Sliding window: a query sees keys with query_pos - key_pos < window; null: all earlier keys. */
  window?: number | null;
}

/**
 * Additive causal mask for `length` new positions after `offset` cached ones, limited to the
 * last `window` keys (the query's own position included) when a window is given. Undefined
 * when nothing needs hiding: one new position that sees every cached key.
 */
export function causalMask(length: number, offset: number, window: number | null = null): MxArray | undefined {
  if (length === 1 && (window === null || offset < window)) return undefined;
  const rows = mx.expandDims(mx.add(mx.arange(length, mx.int32), offset), 1);
  const cols = mx.expandDims(mx.arange(offset + length, mx.int32), 0);
  let allowed = mx.lessEqual(cols, rows);
  if (window !== null) allowed = mx.logicalAnd(allowed, mx.less(mx.subtract(rows, cols), window));
  return mx.where(allowed, mx.array(0, mx.float32), mx.array(-Infinity, mx.float32));
}

/**
 * Attention written with ordinary ops, for what mx.fast.scaledDotProductAttention cannot do
 * (soft-capped scores). Grouped-query heads share keys through broadcasting, not copies.
 */
function softCappedAttention(queries: MxArray, keys: MxArray, values: MxArray, scale: number, cap: number, mask: MxArray | undefined): MxArray {
  const [batch, heads, length, headDim] = queries.shape as [number, number, number, number];
  const kvHeads = keys.shape[1] as number;
  const grouped = queries.reshape([batch, kvHeads, heads / kvHeads, length, headDim]);
  let scores = mx.matmul(mx.multiply(grouped, scale), mx.swapaxes(mx.expandDims(keys, 2), -1, -2));
  scores = softCap(scores, cap);
  if (mask) scores = mx.add(scores, mask);
  const weights = mx.softmax(scores, -1, true);
  return mx.matmul(weights, mx.expandDims(values, 2)).reshape([batch, heads, length, headDim]);
}

/** q, k and v from separate projections or one fused `qkv_proj` (Phi-3). */
type Projections = { q: Linear; k: Linear; v: Linear } | { qkv: Linear };

export class Attention implements Module {
  private readonly qNorm: RMSNorm | null;
  private readonly kNorm: RMSNorm | null;
  private readonly scale: number;
  readonly window: number | null;

  constructor(
    private readonly shape: AttentionShape,
    private readonly rope: RotaryEmbedding,
    private readonly projections: Projections,
    private readonly o: Linear,
    norms: [RMSNorm, RMSNorm] | null,
  ) {
    this.qNorm = norms?.[0] ?? null;
    this.kNorm = norms?.[1] ?? null;
    this.scale = shape.scale ?? shape.headDim ** -0.5;
    this.window = shape.window ?? null;
  }

  static load(store: WeightStore, prefix: string, shape: AttentionShape, rope: RotaryEmbedding): Attention {
    const norm = (name: string, eps: number): RMSNorm => RMSNorm.load(store, `${prefix}.${name}`, eps, shape.qkNormUnitOffset ?? false);
    const norms: [RMSNorm, RMSNorm] | null = shape.qkNormEps === null ? null : [norm('q_norm', shape.qkNormEps), norm('k_norm', shape.qkNormEps)];
    const projections: Projections = store.has(`${prefix}.qkv_proj.weight`)
      ? { qkv: Linear.load(store, `${prefix}.qkv_proj`, shape.qkvBias) }
      : {
          q: Linear.load(store, `${prefix}.q_proj`, shape.qkvBias),
          k: Linear.load(store, `${prefix}.k_proj`, shape.qkvBias),
          v: Linear.load(store, `${prefix}.v_proj`, shape.qkvBias),
        };
    return new Attention(shape, rope, projections, Linear.load(store, `${prefix}.o_proj`), norms);
  }

  private project(x: MxArray): [MxArray, MxArray, MxArray] {
    if (!('qkv' in this.projections)) {
      const { q, k, v } = this.projections;
      return [q.forward(x), k.forward(x), v.forward(x)];
    }
    const qSize = this.shape.heads * this.shape.headDim;
    const kvSize = this.shape.kvHeads * this.shape.headDim;
    const qkv = this.projections.qkv.forward(x);
    return [
      qkv.index('...', mx.Slice(0, qSize)),
      qkv.index('...', mx.Slice(qSize, qSize + kvSize)),
      qkv.index('...', mx.Slice(qSize + kvSize, qSize + 2 * kvSize)),
    ];
  }

  /**
   * `cache` is one KVCache for a batch that shares positions (a prompt), or one per row for a
   * batch of independent sequences each at its own position (continuous batching's decode
   * step). The projections run batched either way; what depends on a row's position (RoPE,
   * its cache, its mask) runs row by row.
   */
  forward(x: MxArray, cache: KVCache | KVCache[], mask: MxArray | undefined): MxArray {
    const [batch, length] = x.shape as [number, number];
    const { heads, kvHeads, headDim } = this.shape;
    const split = (t: MxArray, n: number, norm: RMSNorm | null): MxArray => {
      const perHead = t.reshape([batch, length, n, headDim]);
      return (norm ? norm.forward(perHead) : perHead).transpose(0, 2, 1, 3);
    };
    const [q, k, v] = this.project(x);
    const queries = split(q, heads, this.qNorm);
    const keys = split(k, kvHeads, this.kNorm);
    const values = split(v, kvHeads, null);
    const attended = Array.isArray(cache)
      ? mx.concatenate(
          cache.map((rowCache, row) => {
            const pick = (t: MxArray): MxArray => t.index(mx.Slice(row, row + 1));
            return this.attend(pick(queries), pick(keys), pick(values), rowCache, causalMask(length, rowCache.offset, this.window));
          }),
          0,
        )
      : this.attend(queries, keys, values, cache, mask);
    return this.o.forward(attended.transpose(0, 2, 1, 3).reshape([batch, length, heads * headDim]));
  }

  private attend(queries: MxArray, newKeys: MxArray, newValues: MxArray, cache: KVCache, mask: MxArray | undefined): MxArray {
    const offset = cache.offset;
    const [keys, values] = cache.update(this.rope.apply(newKeys, offset), newValues);
    const rotated = this.rope.apply(queries, offset);
    const cap = this.shape.scoreSoftCap ?? null;
    return cap === null
      ? mx.fast.scaledDotProductAttention(rotated, keys, values, this.scale, mask)
      : softCappedAttention(rotated, keys, values, this.scale, cap, mask);
  }

  parameters(): MxArray[] {
    const projections = 'qkv' in this.projections ? [this.projections.qkv] : [this.projections.q, this.projections.k, this.projections.v];
    return [...projections, this.o, ...(this.qNorm ? [this.qNorm] : []), ...(this.kNorm ? [this.kNorm] : [])].flatMap((m) => m.parameters());
  }
}
