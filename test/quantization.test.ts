/**
 * MLX affine quantization as mlx-lm writes it (`*.weight` packed uint32, `*.scales` and `*.biases`
 * in float16, config.json `quantization: {group_size, bits}` plus per-layer entries) against the
 * same model dequantized to float32: logits within max |diff| < 1e-4 * max(1, logit scale).
 *
 * The fixture models are 64 wide, and node-mlx 0.0.7's mx.quantize refuses matrices narrower than
 * 256 inputs at 4 bits (128 at 8 bits), so this test builds its own Qwen3-shaped model, 256 wide,
 * from a fixed seed. Group sizes 32, 64 and 128 all work in 0.0.7.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadModel } from '../workers/architectures/loader.ts';
import { mx, type MxArray } from '../workers/architectures/mx.ts';

const CONFIG = {
  model_type: 'qwen3',
  hidden_size: 256,
  intermediate_size: 512,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 64,
  vocab_size: 512,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  max_position_embeddings: 256,
  tie_word_embeddings: true,
};
const PROMPT = [[1, 57, 311, 142, 9, 404, 23, 88, 250, 17, 499, 3]];
/** A layer with its own quantization settings, and one left in float, as mlx-lm can write them. */
const OVERRIDDEN = 'model.layers.0.mlp.down_proj';
const UNQUANTIZED = 'model.layers.1.self_attn.o_proj';

function randomWeights(): Map<string, MxArray> {
  let key = mx.random.key(0);
  const normal = (shape: number[], std: number, mean = 0): MxArray => {
    const keys = mx.random.split(key);
    key = keys.index(0);
    return mx.random.normal(shape, mx.float32, mean, std, keys.index(1));
  };
  const { hidden_size: hidden, intermediate_size: ffn, num_attention_heads: heads, num_key_value_heads: kvHeads, head_dim: headDim } = CONFIG;
  const weights = new Map<string, MxArray>([
    ['model.embed_tokens.weight', normal([CONFIG.vocab_size, hidden], 0.2)],
    ['model.norm.weight', normal([hidden], 0.1, 1)],
  ]);
  for (let i = 0; i < CONFIG.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    weights.set(`${p}.input_layernorm.weight`, normal([hidden], 0.1, 1));
    weights.set(`${p}.post_attention_layernorm.weight`, normal([hidden], 0.1, 1));
    weights.set(`${p}.self_attn.q_norm.weight`, normal([headDim], 0.1, 1));
    weights.set(`${p}.self_attn.k_norm.weight`, normal([headDim], 0.1, 1));
    weights.set(`${p}.self_attn.q_proj.weight`, normal([heads * headDim, hidden], 0.06));
    weights.set(`${p}.self_attn.k_proj.weight`, normal([kvHeads * headDim, hidden], 0.06));
    weights.set(`${p}.self_attn.v_proj.weight`, normal([kvHeads * headDim, hidden], 0.06));
    weights.set(`${p}.self_attn.o_proj.weight`, normal([hidden, heads * headDim], 0.06));
    weights.set(`${p}.mlp.gate_proj.weight`, normal([ffn, hidden], 0.06));
    weights.set(`${p}.mlp.up_proj.weight`, normal([ffn, hidden], 0.06));
    weights.set(`${p}.mlp.down_proj.weight`, normal([hidden, ffn], 0.05));
  }
  return weights;
}

interface QuantSettings {
  group_size: number;
  bits: number;
}

/**
 * Writes the quantized checkpoint and its dequantized twin (the float32 weights the quantized
 * ones stand for, after float16 rounding of the scales and biases).
 */
function writeCheckpoints(weights: Map<string, MxArray>, spec: QuantSettings, override: QuantSettings, root: string): { quantized: string; dequantized: string } {
  const quantizedTensors: Record<string, MxArray> = {};
  const dequantizedTensors: Record<string, MxArray> = {};
  for (const [name, weight] of weights) {
    const layer = name.slice(0, -'.weight'.length);
    if (weight.ndim !== 2 || layer === UNQUANTIZED) {
      quantizedTensors[name] = weight;
      dequantizedTensors[name] = weight;
      continue;
    }
    const { group_size: groupSize, bits } = layer === OVERRIDDEN ? override : spec;
    const [packed, scales, biases] = mx.quantize(weight, groupSize, bits) as unknown as [MxArray, MxArray, MxArray];
    const scales16 = scales.astype(mx.float16);
    const biases16 = biases.astype(mx.float16);
    quantizedTensors[name] = packed;
    quantizedTensors[`${layer}.scales`] = scales16;
    quantizedTensors[`${layer}.biases`] = biases16;
    dequantizedTensors[name] = mx.dequantize(packed, scales16.astype(mx.float32), biases16.astype(mx.float32), groupSize, bits);
  }
  const quantized = join(root, 'quantized');
  const dequantized = join(root, 'dequantized');
  const quantization = { ...spec, [OVERRIDDEN]: override, [UNQUANTIZED]: false };
  save(quantized, quantizedTensors, { ...CONFIG, quantization });
  save(dequantized, dequantizedTensors, CONFIG);
  return { quantized, dequantized };
}

function save(dir: string, tensors: Record<string, MxArray>, config: object): void {
  mkdirSync(dir, { recursive: true });
  mx.saveSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'mlx' });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
}

function logits(dir: string): number[][] {
  const { model } = loadModel(dir);
  const result = model.forward(mx.array(PROMPT, mx.int32), model.newCache(), true);
  mx.eval(result);
  return result.index(0).tolist() as number[][];
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  return Math.max(...a.map((row, i) => Math.max(...row.map((value, j) => Math.abs(value - (b[i]?.[j] ?? NaN))))));
}

const weights = randomWeights();
mx.eval(...weights.values());
const root = mkdtempSync(join(tmpdir(), 'quantization-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const floatDir = join(root, 'float');
save(floatDir, Object.fromEntries(weights), CONFIG);
const floatLogits = logits(floatDir);

for (const bits of [4, 8]) {
  for (const groupSize of [32, 64, 128]) {
    t.test(`${bits} bits, group size ${groupSize}`, async (t) => {
      const spec = { group_size: groupSize, bits };
      const override = { group_size: groupSize === 64 ? 128 : 64, bits: bits === 4 ? 8 : 4 };
      const { quantized, dequantized } = writeCheckpoints(weights, spec, override, join(root, `${bits}-${groupSize}`));
      const ours = logits(quantized);
      const reference = logits(dequantized);
      const scale = Math.max(...reference.flat().map(Math.abs));
      const tolerance = 1e-4 * Math.max(1, scale);
      const diff = maxAbsDiff(ours, reference);
      t.ok(diff < tolerance, `quantized model within ${tolerance.toExponential(2)} of its dequantized twin (max abs diff ${diff.toExponential(2)}, logit scale ${scale.toFixed(2)})`);
      const fromFloat = maxAbsDiff(ours, floatLogits);
      t.ok(fromFloat > tolerance, `and really quantized: ${fromFloat.toExponential(2)} away from the float model`);
    });
  }
}
