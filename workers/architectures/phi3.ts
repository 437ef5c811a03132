import { splitHeads, type AttentionShape, type QKVProjection } from './attention.ts';
import type { LanguageModel } from './decoder.ts';
import { Linear } from './layers.ts';
import { loadLlamaFamily, type LlamaConfig } from './llama.ts';
import { mx, type MxArray } from './mx.ts';
import type { WeightStore } from './weights.ts';

/** Phi-3's one `qkv_proj`, whose outputs are the queries, then the keys, then the values. */
class FusedQKV implements QKVProjection {
  constructor(private readonly qkv: Linear) {}

  project(x: MxArray, shape: AttentionShape): [MxArray, MxArray, MxArray] {
    const qSize = shape.heads * shape.headDim;
    const kvSize = shape.kvHeads * shape.headDim;
    const qkv = this.qkv.forward(x);
    const part = (from: number, size: number): MxArray => qkv.index('...', mx.Slice(from, from + size));
    return splitHeads([part(0, qSize), part(qSize, kvSize), part(qSize + kvSize, kvSize)], shape);
  }

  parameters(): MxArray[] {
    return this.qkv.parameters();
  }
}

/**
 * Phi-3: the Llama block with fused `qkv_proj` and `gate_up_proj` (the MLP's loader recognises
 * the latter), a sliding window when the config sets one, and optionally partial RoPE.
 */
export function load(store: WeightStore, config: LlamaConfig): LanguageModel {
  return loadLlamaFamily(store, config, 'phi3', (layerStore, prefix, { attention_bias }) => new FusedQKV(Linear.load(layerStore, `${prefix}.qkv_proj`, attention_bias ?? false)));
}
