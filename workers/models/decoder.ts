/**
 * The decoder stack every architecture shares: embed, N blocks, final norm, output head.
 * The Llama family's block is built here (norm, attention, residual, norm, gated MLP,
 * residual); architectures with other blocks (Gemma) bring their own.
 */
import { Attention, causalMask, type AttentionShape } from './attention.ts';
import { KVCache } from './kv-cache.ts';
import { Embedding, GatedMLP, Linear, RMSNorm, softCap, type Activation, type Module } from './layers.ts';
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
  /** One decode step for independent sequences: `tokens[r]` continues the sequence whose per-layer caches are `caches[r]`. Logits [rows, 1, vocab]. */
  decodeBatch(tokens: number[], caches: KVCache[][]): MxArray;
}

/** The config.json keys every decoder architecture reads (transformers' names). */
export interface DecoderConfig {
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps?: number;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  attention_bias?: boolean;
}

/** One layer of a decoder stack. */
export interface DecoderBlock extends Module {
  /** The sliding window its attention keeps (see AttentionShape.window); null: full causal. */
  readonly window: number | null;
  /** `cache`: one for the whole batch, or one per row (see Attention.forward). */
  forward(x: MxArray, cache: KVCache | KVCache[], mask: MxArray | undefined): MxArray;
}

class PreNormBlock implements DecoderBlock {
  constructor(
    private readonly inputNorm: RMSNorm,
    private readonly attention: Attention,
    private readonly postAttentionNorm: RMSNorm,
    private readonly mlp: GatedMLP,
  ) {}

  get window(): number | null {
    return this.attention.window;
  }

  forward(x: MxArray, cache: KVCache | KVCache[], mask: MxArray | undefined): MxArray {
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
  activation?: Activation;
}

/** What every decoder stack is made of; the blocks are the architecture's own. */
export interface StackParts {
  modelType: string;
  contextLength: number;
  embed: Embedding;
  /** Gemma multiplies embeddings by sqrt(hidden_size). */
  embedScale: number | null;
  blocks: DecoderBlock[];
  norm: RMSNorm;
  head: Linear | null;
  /** Gemma 2's cap * tanh(logits / cap). */
  finalSoftCap: number | null;
}

/** Drops what no architecture computes with, then loads the embedding and the (possibly tied) head. */
export function loadEmbeddings(store: WeightStore, tiedEmbeddings: boolean): { embed: Embedding; head: () => Linear | null } {
  store.discard((name) => name.includes('rotary_emb.inv_freq'));
  if (tiedEmbeddings) store.discard((name) => name.startsWith('lm_head.'));
  const embed = Embedding.load(store, 'model.embed_tokens');
  return { embed, head: () => (tiedEmbeddings ? null : Linear.load(store, 'lm_head')) };
}

export class DecoderStack implements LanguageModel {
  readonly modelType: string;
  readonly contextLength: number;

  constructor(private readonly parts: StackParts) {
    this.modelType = parts.modelType;
    this.contextLength = parts.contextLength;
  }

  /** The Llama-family pre-norm stack. */
  static load(store: WeightStore, spec: DecoderSpec): DecoderStack {
    const { embed, head } = loadEmbeddings(store, spec.tiedEmbeddings);
    const blocks = Array.from({ length: spec.layers }, (_, i) => {
      const prefix = `model.layers.${i}`;
      return new PreNormBlock(
        RMSNorm.load(store, `${prefix}.input_layernorm`, spec.rmsNormEps),
        Attention.load(store, `${prefix}.self_attn`, spec.attention, spec.rope),
        RMSNorm.load(store, `${prefix}.post_attention_layernorm`, spec.rmsNormEps),
        GatedMLP.load(store, `${prefix}.mlp`, spec.activation),
      );
    });
    const norm = RMSNorm.load(store, 'model.norm', spec.rmsNormEps);
    return new DecoderStack({ modelType: spec.modelType, contextLength: spec.contextLength, embed, embedScale: null, blocks, norm, head: head(), finalSoftCap: null });
  }

  get vocabSize(): number {
    return this.parts.embed.rows;
  }

  newCache(): KVCache[] {
    return this.parts.blocks.map(() => new KVCache());
  }

  forward(ids: MxArray, cache: KVCache[], allPositions = false): MxArray {
    const length = ids.shape[1] ?? 1;
    const offset = cache[0]?.offset ?? 0;
    const masks = new Map<number | null, MxArray | undefined>();
    const maskFor = (window: number | null): MxArray | undefined => {
      if (!masks.has(window)) masks.set(window, causalMask(length, offset, window));
      return masks.get(window);
    };
    return this.run(ids, (block, i) => [cache[i] as KVCache, maskFor(block.window)], allPositions);
  }

  decodeBatch(tokens: number[], caches: KVCache[][]): MxArray {
    const ids = mx.array(tokens.map((token) => [token]), mx.int32);
    return this.run(ids, (_, i) => [caches.map((rowCache) => rowCache[i] as KVCache), undefined], false);
  }

  private run(ids: MxArray, layerInputs: (block: DecoderBlock, index: number) => [KVCache | KVCache[], MxArray | undefined], allPositions: boolean): MxArray {
    const { embed, embedScale, blocks, norm, head, finalSoftCap } = this.parts;
    const length = ids.shape[1] ?? 1;
    let h = embed.forward(ids);
    if (embedScale !== null) h = mx.multiply(h, mx.array(embedScale, h.dtype));
    blocks.forEach((block, i) => {
      const [cache, mask] = layerInputs(block, i);
      h = block.forward(h, cache, mask);
    });
    if (!allPositions && length > 1) h = h.index(mx.Slice(), mx.Slice(length - 1, length));
    h = norm.forward(h);
    const logits = head ? head.forward(h) : embed.asLinear(h);
    return finalSoftCap === null ? logits : softCap(logits, finalSoftCap);
  }

  parameters(): MxArray[] {
    const { embed, blocks, norm, head } = this.parts;
    return [embed, ...blocks, norm, ...(head ? [head] : [])].flatMap((m) => m.parameters());
  }
}
