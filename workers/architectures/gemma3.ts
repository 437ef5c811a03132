import { ServeError } from '../../core/errors.ts';
import { Attention, SeparateProjections } from './attention.ts';
import type { DecoderConfig, LanguageModel } from './decoder.ts';
import { loadGemmaStack, orDefault, softCappedKernel, type GemmaConfig, type LayerType } from './gemma.ts';
import { activationNamed } from './layers.ts';
import { createRope, ropeSettings } from './rope.ts';
import type { WeightStore } from './weights.ts';

/** Multimodal Gemma 3 checkpoints often leave the head counts to the defaults. */
export interface Gemma3TextConfig extends Omit<DecoderConfig, 'num_attention_heads'>, GemmaConfig {
  num_attention_heads?: number;
  sliding_window_pattern?: number;
  /** Legacy spelling of the sliding layers' RoPE base. */
  rope_local_base_freq?: number;
}

function layerTypes(config: Gemma3TextConfig): LayerType[] {
  if (config.layer_types) return config.layer_types;
  const pattern = config.sliding_window_pattern ?? 6;
  return Array.from({ length: config.num_hidden_layers }, (_, i): LayerType => ((i + 1) % pattern === 0 ? 'full_attention' : 'sliding_attention'));
}

/**
 * RoPE per layer type: transformers 5 keys `rope_parameters` by layer type; the legacy keys give
 * sliding layers `rope_local_base_freq` without scaling and full layers `rope_theta` + `rope_scaling`.
 */
function ropeFor(config: Gemma3TextConfig, type: LayerType, headDim: number) {
  const keyedByType = config.rope_parameters && type in config.rope_parameters;
  if (keyedByType) {
    const { base, scaling } = ropeSettings(config, type);
    return createRope(headDim, base ?? (type === 'sliding_attention' ? 10000 : 1000000), scaling);
  }
  if (type === 'sliding_attention') return createRope(headDim, config.rope_local_base_freq ?? 10000, null);
  return createRope(headDim, config.rope_theta ?? 1000000, config.rope_scaling);
}

/**
 * Gemma 3 (text): the Gemma block with RMSNorm on query and key heads, no soft-capping by
 * default, a sliding window on all but every `sliding_window_pattern`-th layer, and a separate
 * RoPE base for sliding layers. Defaults are transformers' Gemma3TextConfig defaults.
 */
export function loadText(store: WeightStore, config: Gemma3TextConfig): LanguageModel {
  const headDim = config.head_dim ?? 256;
  const eps = config.rms_norm_eps ?? 1e-6;
  const heads = config.num_attention_heads ?? 8;
  const window = config.sliding_window ?? 4096;
  const kernel = softCappedKernel(orDefault(config.attn_logit_softcapping, null));
  return loadGemmaStack(store, {
    modelType: 'gemma3_text',
    hiddenSize: config.hidden_size,
    rmsNormEps: eps,
    contextLength: config.max_position_embeddings ?? 131072,
    tiedEmbeddings: config.tie_word_embeddings ?? true,
    activation: activationNamed(config.hidden_activation ?? config.hidden_act, 'gelu_tanh'),
    finalSoftCap: orDefault(config.final_logit_softcapping, null),
    layers: layerTypes(config).map((type) => {
      const shape = { heads, kvHeads: config.num_key_value_heads ?? 4, headDim, scale: (config.query_pre_attn_scalar ?? 256) ** -0.5, window: type === 'sliding_attention' ? window : null };
      const rope = ropeFor(config, type, headDim);
      return (layerStore: WeightStore, prefix: string) =>
        Attention.load(layerStore, prefix, shape, rope, SeparateProjections.load(layerStore, prefix, config.attention_bias ?? false, { eps, unitOffset: true }), kernel);
    }),
  });
}

/** Where multimodal Gemma 3 checkpoints keep the text model (transformers 5, then 4 and mlx-vlm). */
const TEXT_MODEL_PREFIXES = ['model.language_model.', 'language_model.model.'];

/**
 * Gemma 3 multimodal checkpoints (`model_type: gemma3`): the text model only. The vision tower
 * and projector are dropped; image input is not supported.
 */
export function loadMultimodal(store: WeightStore, config: { text_config?: Gemma3TextConfig }): LanguageModel {
  if (!config.text_config) throw new ServeError('model_load_failed', "a 'gemma3' config.json needs a text_config");
  const prefix = TEXT_MODEL_PREFIXES.find((candidate) => store.has(`${candidate}embed_tokens.weight`));
  if (!prefix) throw new ServeError('model_load_failed', `no text model weights under ${TEXT_MODEL_PREFIXES.join(' or ')}`);
  store.discard((name) => !name.startsWith(prefix) && !name.startsWith('lm_head.') && !name.startsWith('language_model.lm_head.'));
  store.movePrefix(prefix, 'model.');
  store.movePrefix('language_model.lm_head.', 'lm_head.');
  return loadText(store, config.text_config);
}
