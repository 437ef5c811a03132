import type { KVCache } from './kv-cache.ts';
import { Linear, RMSNorm, type Module } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { RotaryEmbedding } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Qwen2-style biases on q, k and v. */
  qkvBias: boolean;
  /** Qwen3-style RMSNorm of each query and key head, eps given. */
  qkNormEps: number | null;
}

/** Additive causal mask for `length` new positions after `offset` cached ones. */
export function causalMask(length: number, offset: number): MxArray | undefined {
  if (length === 1) return undefined;
  const rows = mx.add(mx.arange(length, mx.int32), offset);
  const cols = mx.arange(offset + length, mx.int32);
  const allowed = mx.lessEqual(mx.expandDims(cols, 0), mx.expandDims(rows, 1));
  return mx.where(allowed, mx.array(0, mx.float32), mx.array(-Infinity, mx.float32));
}

export class Attention implements Module {
  private readonly qNorm: RMSNorm | null;
  private readonly kNorm: RMSNorm | null;
  private readonly scale: number;

  constructor(
    private readonly shape: AttentionShape,
    private readonly rope: RotaryEmbedding,
    private readonly q: Linear,
    private readonly k: Linear,
    private readonly v: Linear,
    private readonly o: Linear,
    norms: [RMSNorm, RMSNorm] | null,
  ) {
    this.qNorm = norms?.[0] ?? null;
    this.kNorm = norms?.[1] ?? null;
    this.scale = shape.headDim ** -0.5;
  }

  static load(store: WeightStore, prefix: string, shape: AttentionShape, rope: RotaryEmbedding): Attention {
    const norms: [RMSNorm, RMSNorm] | null =
      shape.qkNormEps === null ? null : [RMSNorm.load(store, `${prefix}.q_norm`, shape.qkNormEps), RMSNorm.load(store, `${prefix}.k_norm`, shape.qkNormEps)];
    return new Attention(
      shape,
      rope,
      Linear.load(store, `${prefix}.q_proj`, shape.qkvBias),
      Linear.load(store, `${prefix}.k_proj`, shape.qkvBias),
      Linear.load(store, `${prefix}.v_proj`, shape.qkvBias),
      Linear.load(store, `${prefix}.o_proj`),
      norms,
    );
  }

  forward(x: MxArray, cache: KVCache, mask: MxArray | undefined): MxArray {
    const [batch, length] = x.shape as [number, number];
    const { heads, kvHeads, headDim } = this.shape;
    const split = (t: MxArray, n: number, norm: RMSNorm | null): MxArray => {
      const perHead = t.reshape([batch, length, n, headDim]);
      return (norm ? norm.forward(perHead) : perHead).transpose(0, 2, 1, 3);
    };
    const offset = cache.offset;
    const queries = this.rope.apply(split(this.q.forward(x), heads, this.qNorm), offset);
    const newKeys = this.rope.apply(split(this.k.forward(x), kvHeads, this.kNorm), offset);
    const [keys, values] = cache.update(newKeys, split(this.v.forward(x), kvHeads, null));
    const attended = mx.fast.scaledDotProductAttention(queries, keys, values, this.scale, mask);
    return this.o.forward(attended.transpose(0, 2, 1, 3).reshape([batch, length, heads * headDim]));
  }

  parameters(): MxArray[] {
    return [this.q, this.k, this.v, this.o, ...(this.qNorm ? [this.qNorm] : []), ...(this.kNorm ? [this.kNorm] : [])].flatMap((m) => m.parameters());
  }
}
