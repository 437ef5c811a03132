/**
 * Child process: writes a random-weight model of Qwen2.5-0.5B's shape (fp32), or its 4-bit
 * MLX-quantized variant made from the fp32 one, with the real Qwen3 tokenizer (its 151669
 * tokens fit Qwen2.5's 151936-row embedding); or converts an MLX model folder (one of those, or
 * the built-in model) to a GGUF file for the llama.cpp comparison. Runs apart from the bench so
 * the ~2 GB of weights leave with the process.
 *
 * usage: node --import tsx --expose-gc bench/make-model.ts <fp32|4bit> <dir> <builtin-model-dir>
 *        node --import tsx --expose-gc bench/make-model.ts <F32|Q4_0> <file.gguf> <builtin-model-dir> <source-dir>
 */
import { copyFileSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { convertToGguf } from '../src/gguf/convert.ts';
import { materializeDefaultModel } from '../workers/default-model.ts';
import { mx, type MxArray } from '../workers/architectures/mx.ts';

const SEED = 5052026;
const GROUP_SIZE = 64;
const BITS = 4;

const QWEN25_05B_CONFIG = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  vocab_size: 151936,
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  max_position_embeddings: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'float32',
  bos_token_id: 151643,
  eos_token_id: 151645,
} as const;

function fp32Tensors(): Record<string, MxArray> {
  const c = QWEN25_05B_CONFIG;
  const headDim = c.hidden_size / c.num_attention_heads;
  const kv = c.num_key_value_heads * headDim;
  const shapes: [string, number[]][] = [['model.embed_tokens.weight', [c.vocab_size, c.hidden_size]]];
  const norms = ['model.norm.weight'];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    norms.push(`${p}.input_layernorm.weight`, `${p}.post_attention_layernorm.weight`);
    shapes.push(
      [`${p}.self_attn.q_proj.weight`, [c.hidden_size, c.hidden_size]],
      [`${p}.self_attn.q_proj.bias`, [c.hidden_size]],
      [`${p}.self_attn.k_proj.weight`, [kv, c.hidden_size]],
      [`${p}.self_attn.k_proj.bias`, [kv]],
      [`${p}.self_attn.v_proj.weight`, [kv, c.hidden_size]],
      [`${p}.self_attn.v_proj.bias`, [kv]],
      [`${p}.self_attn.o_proj.weight`, [c.hidden_size, c.hidden_size]],
      [`${p}.mlp.gate_proj.weight`, [c.intermediate_size, c.hidden_size]],
      [`${p}.mlp.up_proj.weight`, [c.intermediate_size, c.hidden_size]],
      [`${p}.mlp.down_proj.weight`, [c.hidden_size, c.intermediate_size]],
    );
  }
  const tensors: Record<string, MxArray> = {};
  shapes.forEach(([name, shape], index) => {
    tensors[name] = mx.random.normal(shape, mx.float32, 0, 0.02, mx.random.key(SEED + index));
  });
  for (const name of norms) tensors[name] = mx.ones([c.hidden_size], mx.float32);
  return tensors;
}

/** mlx-community's layout: packed uint32 weights, fp16 scales and biases, for every matrix but the norms and biases. */
function quantized(fp32Dir: string): Record<string, MxArray> {
  const source = mx.load(join(fp32Dir, 'model.safetensors')) as unknown as Record<string, MxArray>;
  const tensors: Record<string, MxArray> = {};
  for (const [name, tensor] of Object.entries(source)) {
    if (!name.endsWith('.weight') || tensor.ndim !== 2) {
      tensors[name] = tensor;
      continue;
    }
    const prefix = name.slice(0, -'.weight'.length);
    const [weight, scales, biases] = mx.quantize(tensor, GROUP_SIZE, BITS) as unknown as [MxArray, MxArray, MxArray];
    tensors[name] = weight;
    tensors[`${prefix}.scales`] = scales.astype(mx.float16);
    tensors[`${prefix}.biases`] = biases.astype(mx.float16);
    mx.eval(weight, tensors[`${prefix}.scales`] as MxArray, tensors[`${prefix}.biases`] as MxArray);
  }
  return tensors;
}

function write(format: string, dir: string, builtinDir: string): void {
  const staging = `${dir}.partial-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });
  const fp32Dir = join(dirname(dir), 'qwen2.5-0.5b-shape-fp32');
  const config = format === 'fp32' ? QWEN25_05B_CONFIG : { ...QWEN25_05B_CONFIG, quantization: { group_size: GROUP_SIZE, bits: BITS } };
  mx.saveSafetensors(join(staging, 'model.safetensors'), format === 'fp32' ? fp32Tensors() : quantized(fp32Dir), { format: 'mlx' });
  materializeDefaultModel(builtinDir);
  for (const file of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(join(builtinDir, file), join(staging, file));
  writeFileSync(join(staging, 'config.json'), JSON.stringify(config, null, 2));
  rmSync(dir, { recursive: true, force: true });
  renameSync(staging, dir);
  const bytes = statSync(join(dir, 'model.safetensors')).size;
  process.stdout.write(`${JSON.stringify({ dir, bytes })}\n`);
}

/** The same weights as GGUF: matrices in `type`, norms and biases F32, as llama-quantize leaves them. */
function writeGguf(type: 'F32' | 'Q4_0', path: string, builtinDir: string, sourceDir: string): void {
  if (sourceDir === builtinDir) materializeDefaultModel(builtinDir);
  const staging = `${path}.partial-${process.pid}`;
  mkdirSync(dirname(path), { recursive: true });
  convertToGguf(sourceDir, staging, { type, name: basename(path, '.gguf') });
  renameSync(staging, path);
  process.stdout.write(`${JSON.stringify({ path, bytes: statSync(path).size })}\n`);
}

const [format, target, builtinDir, sourceDir] = process.argv.slice(2);
if ((format === 'fp32' || format === '4bit') && target && builtinDir) write(format, target, builtinDir);
else if ((format === 'F32' || format === 'Q4_0') && target && builtinDir && sourceDir) writeGguf(format, target, builtinDir, sourceDir);
else {
  process.stderr.write('usage: make-model.ts <fp32|4bit> <dir> <builtin-model-dir>\n       make-model.ts <F32|Q4_0> <file.gguf> <builtin-model-dir> <source-dir>\n');
  process.exit(2);
}
