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
  return DecoderStack.load(store, {
    modelType: 'qwen3',
    layers: config.num_hidden_layers,
    hiddenSize: config.hidden_size,
    rmsNormEps: eps,
    contextLength: config.max_position_embeddings ?? 40960,
    tiedEmbeddings: config.tie_word_embeddings ?? true,
    attention: {
      heads: config.num_attention_heads,
      kvHeads: config.num_key_value_heads,
      headDim: config.head_dim,
      qkvBias: config.attention_bias ?? false,
      qkNormEps: eps,
    },
    rope: ropeFromConfig(config, config.head_dim, 1000000),
  });
}
