/**
 * What Gemma 2 and Gemma 3 share: the "sandwich" block (a norm before and after both attention
 * and MLP), RMSNorms that scale by (1 + w), embeddings scaled by sqrt(hidden_size), GELU-tanh
 * MLP, and per-layer attention (sliding or full).
 */
import type { Attention, AttentionContext, AttentionKernel } from './attention.ts';
import { DecoderStack, loadEmbeddings, type DecoderBlock, type LanguageModel } from './decoder.ts';
import { GatedMLP, RMSNorm, softCap, type Activation } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { RopeConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

class SandwichBlock implements DecoderBlock {
  constructor(
    private readonly inputNorm: RMSNorm,
    private readonly attention: Attention,
    private readonly postAttentionNorm: RMSNorm,
    private readonly preFeedforwardNorm: RMSNorm,
    private readonly mlp: GatedMLP,
    private readonly postFeedforwardNorm: RMSNorm,
  ) {}

  get window(): number | null {
    return this.attention.window;
  }

  forward(x: MxArray, context: AttentionContext): MxArray {
    const h = mx.add(x, this.postAttentionNorm.forward(this.attention.forward(this.inputNorm.forward(x), context)));
    return mx.add(h, this.postFeedforwardNorm.forward(this.mlp.forward(this.preFeedforwardNorm.forward(h))));
  }

  parameters(): MxArray[] {
    return [this.inputNorm, this.attention, this.postAttentionNorm, this.preFeedforwardNorm, this.mlp, this.postFeedforwardNorm].flatMap((m) => m.parameters());
  }
}

/**
 * Attention with Gemma 2's cap * tanh(score / cap) on the scores before the mask, written with
 * ordinary ops (the fused kernel has no such step). Grouped-query heads share their key head
 * through broadcasting, not copies. Undefined (the default kernel) without a cap.
 */
export function softCappedKernel(cap: number | null): AttentionKernel | undefined {
  if (cap === null) return undefined;
  return (queries, keys, values, scale, mask) => {
    const [batch, heads, length, headDim] = queries.shape as [number, number, number, number];
    const kvHeads = keys.shape[1] as number;
    const grouped = queries.reshape([batch, kvHeads, heads / kvHeads, length, headDim]);
    let scores = softCap(mx.matmul(mx.multiply(grouped, scale), mx.swapaxes(mx.expandDims(keys, 2), -1, -2)), cap);
    // A per-row mask [batch, 1, length, keys] needs the group axis the scores have.
    if (mask) scores = mx.add(scores, mask.ndim === 4 ? mx.expandDims(mask, 2) : mask);
    return mx.matmul(mx.softmax(scores, -1, true), mx.expandDims(values, 2)).reshape([batch, heads, length, headDim]);
  };
}

export type LayerType = 'sliding_attention' | 'full_attention';

/** The config.json keys Gemma 2 and 3 add to a decoder's. */
export interface GemmaConfig extends RopeConfig {
  hidden_activation?: string;
  hidden_act?: string;
  query_pre_attn_scalar?: number;
  attn_logit_softcapping?: number | null;
  final_logit_softcapping?: number | null;
  sliding_window?: number | null;
  layer_types?: LayerType[];
}

export interface GemmaSpec {
  modelType: string;
  hiddenSize: number;
  rmsNormEps: number;
  contextLength: number;
  tiedEmbeddings: boolean;
  activation: Activation;
  finalSoftCap: number | null;
  /** Each layer's attention, loaded from the weights under `prefix`. */
  layers: ((store: WeightStore, prefix: string) => Attention)[];
}

export function loadGemmaStack(store: WeightStore, spec: GemmaSpec): LanguageModel {
  const { embed, head } = loadEmbeddings(store, spec.tiedEmbeddings);
  const norm = (name: string): RMSNorm => RMSNorm.load(store, name, spec.rmsNormEps, true);
  const blocks = spec.layers.map((attention, i) => {
    const prefix = `model.layers.${i}`;
    return new SandwichBlock(
      norm(`${prefix}.input_layernorm`),
      attention(store, `${prefix}.self_attn`),
      norm(`${prefix}.post_attention_layernorm`),
      norm(`${prefix}.pre_feedforward_layernorm`),
      GatedMLP.load(store, `${prefix}.mlp`, spec.activation),
      norm(`${prefix}.post_feedforward_layernorm`),
    );
  });
  return new DecoderStack({
    modelType: spec.modelType,
    contextLength: spec.contextLength,
    embed,
    embedScale: Math.sqrt(spec.hiddenSize),
    blocks,
    norm: norm('model.norm'),
    head: head(),
    finalSoftCap: spec.finalSoftCap,
  });
}

/** A config value that may be explicitly null (meaning "off"), with a default when absent. */
export function orDefault<T>(value: T | null | undefined, fallback: T | null): T | null {
  return value === undefined ? fallback : value;
}
