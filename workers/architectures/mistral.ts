import type { LanguageModel } from './decoder.ts';
import { loadLlamaFamily, type LlamaConfig } from './llama.ts';
import type { WeightStore } from './weights.ts';

/** Mistral: the Llama block with a sliding attention window on every layer (when the config sets one). */
export function load(store: WeightStore, config: LlamaConfig): LanguageModel {
  return loadLlamaFamily(store, config, 'mistral');
}
