import type { LanguageModel } from './decoder.ts';
import { loadGemmaStack, orDefault, type LayerType } from './gemma.ts';
import { activationNamed } from './layers.ts';
import { ropeFromConfig, type RopeConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

export interface Gemma2Config extends RopeConfig {
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps?: number;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  attention_bias?: boolean;
  hidden_activation?: string;
  hidden_act?: string;
  query_pre_attn_scalar?: number;
  attn_logit_softcapping?: number | null;
  final_logit_softcapping?: number | null;
  sliding_window?: number | null;
  layer_types?: LayerType[];
}

/**
 * Gemma 2: the Gemma block with soft-capped attention scores and logits, scores scaled by
 * 1/sqrt(query_pre_attn_scalar), and sliding and full attention alternating (sliding first).
 * Defaults are transformers' Gemma2Config defaults.
 */
export function load(store: WeightStore, config: Gemma2Config): LanguageModel {
  const headDim = config.head_dim ?? 256;
  const rope = ropeFromConfig(config, headDim, 10000);
  const window = config.sliding_window ?? 4096;
  const attention = (type: LayerType) => ({
    heads: config.num_attention_heads,
    kvHeads: config.num_key_value_heads ?? config.num_attention_heads,
    headDim,
    qkvBias: config.attention_bias ?? false,
    qkNormEps: null,
    scale: (config.query_pre_attn_scalar ?? 256) ** -0.5,
    scoreSoftCap: orDefault(config.attn_logit_softcapping, 50),
    window: type === 'sliding_attention' ? window : null,
  });
  const layerTypes = config.layer_types ?? Array.from({ length: config.num_hidden_layers }, (_, i): LayerType => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  return loadGemmaStack(store, {
    modelType: 'gemma2',
    hiddenSize: config.hidden_size,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    contextLength: config.max_position_embeddings ?? 8192,
    tiedEmbeddings: config.tie_word_embeddings ?? true,
    activation: activationNamed(config.hidden_activation ?? config.hidden_act, 'gelu_tanh'),
    finalSoftCap: orDefault(config.final_logit_softcapping, 30),
    layers: layerTypes.map((type) => ({ attention: attention(type), rope })),
  });
}
