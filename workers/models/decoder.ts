/**
 * The pre-norm decoder stack the Llama family shares: embed, N blocks of
 * (norm, attention, residual, norm, gated MLP, residual), final norm, output head.
 */
import { Attention, causalMask, type AttentionShape } from './attention.ts';
import { KVCache } from './kv-cache.ts';
import { Embedding, GatedMLP, Linear, RMSNorm, type Module } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { RotaryEmbedding } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface LanguageModel extends Module {
  readonly modelType: string;
  readonly contextLength: number;
  readonly vocabSize: number;
  newCache(): KVCache[];
  /** Logits [batch, positions, vocab]; only the last position unless `allPositions`. */
  forward(ids: MxArray, cache: KVCache[], allPositions?: boolean): MxArray;
}

class PreNormBlock implements Module {
  constructor(
    private readonly inputNorm: RMSNorm,
    private readonly attention: Attention,
    private readonly postAttentionNorm: RMSNorm,
    private readonly mlp: GatedMLP,
  ) {}

  forward(x: MxArray, cache: KVCache, mask: MxArray | undefined): MxArray {
    const h = mx.add(x, this.attention.forward(this.inputNorm.forward(x), cache, mask));
    return mx.add(h, this.mlp.forward(this.postAttentionNorm.forward(h)));
  }

  parameters(): MxArray[] {
    return [this.inputNorm, this.attention, this.postAttentionNorm, this.mlp].flatMap((m) => m.parameters());
  }
}

export interface DecoderSpec {
  modelType: string;
  layers: number;
  hiddenSize: number;
  rmsNormEps: number;
  contextLength: number;
  tiedEmbeddings: boolean;
  attention: AttentionShape;
  rope: RotaryEmbedding;
}

export class DecoderStack implements LanguageModel {
  readonly modelType: string;
  readonly contextLength: number;

  private constructor(
    spec: DecoderSpec,
    private readonly embed: Embedding,
    private readonly blocks: PreNormBlock[],
    private readonly norm: RMSNorm,
    private readonly head: Linear | null,
  ) {
    this.modelType = spec.modelType;
    this.contextLength = spec.contextLength;
  }

  static load(store: WeightStore, spec: DecoderSpec): DecoderStack {
    store.discard((name) => name.includes('rotary_emb.inv_freq'));
    if (spec.tiedEmbeddings) store.discard((name) => name.startsWith('lm_head.'));
    const embed = Embedding.load(store, 'model.embed_tokens');
    const blocks = Array.from({ length: spec.layers }, (_, i) => {
      const prefix = `model.layers.${i}`;
      return new PreNormBlock(
        RMSNorm.load(store, `${prefix}.input_layernorm`, spec.rmsNormEps),
        Attention.load(store, `${prefix}.self_attn`, spec.attention, spec.rope),
        RMSNorm.load(store, `${prefix}.post_attention_layernorm`, spec.rmsNormEps),
        GatedMLP.load(store, `${prefix}.mlp`),
      );
    });
    const norm = RMSNorm.load(store, 'model.norm', spec.rmsNormEps);
    const head = spec.tiedEmbeddings ? null : Linear.load(store, 'lm_head');
    return new DecoderStack(spec, embed, blocks, norm, head);
  }

  get vocabSize(): number {
    return this.embed.rows;
  }

  newCache(): KVCache[] {
    return this.blocks.map(() => new KVCache());
  }

  forward(ids: MxArray, cache: KVCache[], allPositions = false): MxArray {
    const length = ids.shape[1] ?? 1;
    const mask = causalMask(length, cache[0]?.offset ?? 0);
    let h = this.embed.forward(ids);
    this.blocks.forEach((block, i) => {
      h = block.forward(h, cache[i] as KVCache, mask);
    });
    if (!allPositions && length > 1) h = h.index(mx.Slice(), mx.Slice(length - 1, length));
    h = this.norm.forward(h);
    return this.head ? this.head.forward(h) : this.embed.asLinear(h);
  }

  parameters(): MxArray[] {
    return [this.embed, ...this.blocks, this.norm, ...(this.head ? [this.head] : [])].flatMap((m) => m.parameters());
  }
}
