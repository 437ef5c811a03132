import { DecoderStack, type LanguageModel } from './decoder.ts';
import { createRope, type RopeScaling } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface LlamaConfig {
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_scaling?: RopeScaling | null;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  attention_bias?: boolean;
}

export function load(store: WeightStore, config: LlamaConfig): LanguageModel {
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  return DecoderStack.load(store, {
    modelType: 'llama',
    layers: config.num_hidden_layers,
    hiddenSize: config.hidden_size,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    contextLength: config.max_position_embeddings ?? 4096,
    tiedEmbeddings: config.tie_word_embeddings ?? false,
    attention: {
      heads: config.num_attention_heads,
      kvHeads: config.num_key_value_heads ?? config.num_attention_heads,
      headDim,
      qkvBias: config.attention_bias ?? false,
      qkNormEps: null,
    },
    rope: createRope(headDim, config.rope_theta ?? 10000, config.rope_scaling),
  });
}
