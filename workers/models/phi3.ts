import type { LanguageModel } from './decoder.ts';
import { loadLlamaFamily, type LlamaConfig } from './llama.ts';
import type { WeightStore } from './weights.ts';

/**
 * Phi-3: the Llama block with fused `qkv_proj` and `gate_up_proj` (the loaders of attention and
 * MLP recognise them), a sliding window when the config sets one, and optionally partial RoPE.
 */
export function load(store: WeightStore, config: LlamaConfig): LanguageModel {
  return loadLlamaFamily(store, config, 'phi3');
}
