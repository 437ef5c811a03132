import { Attention, SeparateProjections } from './attention.ts';
import { DecoderStack, type DecoderConfig, type LanguageModel } from './decoder.ts';
import { ropeFromConfig, type RopeConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface Qwen2Config extends DecoderConfig, RopeConfig {
  num_key_value_heads: number;
}

/** Qwen2: the Llama block with biases on the q, k and v projections. */
export function load(store: WeightStore, config: Qwen2Config): LanguageModel {
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  const shape = { heads: config.num_attention_heads, kvHeads: config.num_key_value_heads, headDim };
  const rope = ropeFromConfig(config, headDim, 1000000);
  return DecoderStack.load(store, {
    modelType: 'qwen2',
    layers: config.num_hidden_layers,
    hiddenSize: config.hidden_size,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    contextLength: config.max_position_embeddings ?? 32768,
    tiedEmbeddings: config.tie_word_embeddings ?? false,
    attention: (layerStore, prefix) => Attention.load(layerStore, prefix, shape, rope, SeparateProjections.load(layerStore, prefix, true)),
  });
}
