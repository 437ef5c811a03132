import { Attention, SeparateProjections, type AttentionShape } from './attention.ts';
import type { DecoderConfig, LanguageModel } from './decoder.ts';
import { loadGemmaStack, orDefault, softCappedKernel, type GemmaConfig, type LayerType } from './gemma.ts';
import { activationNamed } from './layers.ts';
import { ropeFromConfig } from './rope.ts';
import type { WeightStore } from './weights.ts';

export type Gemma2Config = DecoderConfig & GemmaConfig;

/**
 * Gemma 2: the Gemma block with soft-capped attention scores and logits, scores scaled by
 * 1/sqrt(query_pre_attn_scalar), and sliding and full attention alternating (sliding first).
 * Defaults are transformers' Gemma2Config defaults.
 */
export function load(store: WeightStore, config: Gemma2Config): LanguageModel {
  const headDim = config.head_dim ?? 256;
  const rope = ropeFromConfig(config, headDim, 10000);
  const window = config.sliding_window ?? 4096;
  const shape = (type: LayerType): AttentionShape => ({
    heads: config.num_attention_heads,
    kvHeads: config.num_key_value_heads ?? config.num_attention_heads,
    headDim,
    scale: (config.query_pre_attn_scalar ?? 256) ** -0.5,
    window: type === 'sliding_attention' ? window : null,
  });
  const kernel = softCappedKernel(orDefault(config.attn_logit_softcapping, 50));
  const attention = (type: LayerType) => (layerStore: WeightStore, prefix: string) =>
    Attention.load(layerStore, prefix, shape(type), rope, SeparateProjections.load(layerStore, prefix, config.attention_bias ?? false), kernel);
  const layerTypes = config.layer_types ?? Array.from({ length: config.num_hidden_layers }, (_, i): LayerType => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  return loadGemmaStack(store, {
    modelType: 'gemma2',
    hiddenSize: config.hidden_size,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    contextLength: config.max_position_embeddings ?? 8192,
    tiedEmbeddings: config.tie_word_embeddings ?? true,
    activation: activationNamed(config.hidden_activation ?? config.hidden_act, 'gelu_tanh'),
    finalSoftCap: orDefault(config.final_logit_softcapping, 30),
    layers: layerTypes.map(attention),
  });
}
