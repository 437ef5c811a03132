import { Attention, SeparateProjections, type AttentionShape, type QKVProjection } from './attention.ts';
import { DecoderStack, type DecoderConfig, type LanguageModel } from './decoder.ts';
import { activationNamed } from './layers.ts';
import { ropeFromConfig, type RopeConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface LlamaConfig extends DecoderConfig, RopeConfig {
  hidden_act?: string;
  /** Mistral's sliding window; null or absent: full attention. */
  sliding_window?: number | null;
}

/** How a Llama-family architecture reads one layer's q, k and v weights. */
export type ProjectionLoader = (store: WeightStore, prefix: string, config: LlamaConfig) => QKVProjection;

const separateProjections: ProjectionLoader = (store, prefix, config) => SeparateProjections.load(store, prefix, config.attention_bias ?? false);

/** Llama, and the architectures that are Llama with other defaults (Mistral) or other projections (Phi-3). */
export function loadLlamaFamily(store: WeightStore, config: LlamaConfig, modelType: string, projections: ProjectionLoader = separateProjections): LanguageModel {
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  const shape: AttentionShape = {
    heads: config.num_attention_heads,
    kvHeads: config.num_key_value_heads ?? config.num_attention_heads,
    headDim,
    window: config.sliding_window ?? null,
  };
  const rope = ropeFromConfig(config, headDim, 10000);
  return DecoderStack.load(store, {
    modelType,
    layers: config.num_hidden_layers,
    hiddenSize: config.hidden_size,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    contextLength: config.max_position_embeddings ?? 4096,
    tiedEmbeddings: config.tie_word_embeddings ?? false,
    attention: (layerStore, prefix) => Attention.load(layerStore, prefix, shape, rope, projections(layerStore, prefix, config)),
    activation: activationNamed(config.hidden_act, 'silu'),
  });
}

/** Llama ignores `sliding_window` (transformers' LlamaAttention has none). */
export function load(store: WeightStore, config: LlamaConfig): LanguageModel {
  return loadLlamaFamily(store, { ...config, sliding_window: null }, 'llama');
}
