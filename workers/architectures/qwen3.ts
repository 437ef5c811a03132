import { Attention, SeparateProjections } from './attention.ts';
import { DecoderStack, type DecoderConfig, type LanguageModel } from './decoder.ts';
import { ropeFromConfig, type RopeConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface Qwen3Config extends DecoderConfig, RopeConfig {
  num_key_value_heads: number;
  head_dim: number;
}

/** Qwen3: the Llama block with an explicit head_dim and RMSNorm on every query and key head. */
export function load(store: WeightStore, config: Qwen3Config): LanguageModel {
  const eps = config.rms_norm_eps ?? 1e-6;
  const shape = { heads: config.num_attention_heads, kvHeads: config.num_key_value_heads, headDim: config.head_dim };
  const rope = ropeFromConfig(config, config.head_dim, 1000000);
  const projections = (layerStore: WeightStore, prefix: string) => SeparateProjections.load(layerStore, prefix, config.attention_bias ?? false, { eps, unitOffset: false });
  return DecoderStack.load(store, {
    modelType: 'qwen3',
    layers: config.num_hidden_layers,
    hiddenSize: config.hidden_size,
    rmsNormEps: eps,
    contextLength: config.max_position_embeddings ?? 40960,
    tiedEmbeddings: config.tie_word_embeddings ?? true,
    attention: (layerStore, prefix) => Attention.load(layerStore, prefix, shape, rope, projections(layerStore, prefix)),
  });
}
