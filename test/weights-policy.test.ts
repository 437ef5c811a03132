/** --weights: quantized checkpoints held as stored or dequantized to fp32, and the memory guard's fallback. */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { mx } from '../workers/architectures/mx.ts';
import { estimateLoadBytes, availableMemoryBytes } from '../src/models/footprint.ts';
import type { ServerStatus } from '../src/api/admin.ts';
import { post, serverStatus, startServer, tempDir, TEST_CACHE_DIR } from './helpers/server.ts';

const modelsDir = tempDir('mlx-quantized-');
const quantized = join(modelsDir, 'tiny-qwen3-8bit');

/**
 * An 8-bit MLX-layout copy of the built-in model (made by the first server's load if need be).
 * Returns what a server process holds before it loads a model, which --memory-limit counts.
 */
async function makeQuantizedModel(): Promise<number> {
  const source = join(TEST_CACHE_DIR, 'tiny-qwen3');
  const warm = await startServer(['--idle-timeout', '0']);
  const unloadedBytes = (await serverStatus(warm.url)).memory.rss_gb * 1024 ** 3;
  await post(`${warm.url}/admin/load`, {});
  await warm.stop();
  mkdirSync(quantized, { recursive: true });
  const tensors = mx.load(join(source, 'model.safetensors')) as unknown as Record<string, ReturnType<typeof mx.array>>;
  const out: Record<string, ReturnType<typeof mx.array>> = {};
  for (const [name, tensor] of Object.entries(tensors)) {
    if (tensor.ndim === 2) {
      const [weight, scales, biases] = mx.quantize(tensor, 64, 8) as unknown as ReturnType<typeof mx.array>[];
      const prefix = name.replace(/\.weight$/, '');
      out[`${prefix}.weight`] = weight as ReturnType<typeof mx.array>;
      out[`${prefix}.scales`] = (scales as ReturnType<typeof mx.array>).astype(mx.float16);
      out[`${prefix}.biases`] = (biases as ReturnType<typeof mx.array>).astype(mx.float16);
    } else out[name] = tensor;
  }
  mx.saveSafetensors(join(quantized, 'model.safetensors'), out, { format: 'mlx' });
  const config = JSON.parse(readFileSync(join(source, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(quantized, 'config.json'), JSON.stringify({ ...config, quantization: { group_size: 64, bits: 8 } }));
  for (const file of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(join(source, file), join(quantized, file));
  return unloadedBytes;
}

const unloadedServerBytes = await makeQuantizedModel();


async function loadWith(args: string[], model = 'tiny-qwen3-8bit'): Promise<{ status: ServerStatus; text: string }> {
  const server = await startServer(['--idle-timeout', '0', '--models-dir', modelsDir, ...args]);
  try {
    const r = await post(`${server.url}/v1/completions`, { model, prompt: 'Hello', max_tokens: 8, temperature: 0, ignore_eos: true });
    if (r.status !== 200) throw new Error(JSON.stringify(r.body));
    return { status: await serverStatus(server.url), text: r.body.choices[0].text };
  } finally {
    await server.stop();
  }
}

t.test('native keeps the 8-bit matrices; fp32 and auto (on a CPU) dequantize them', async (t) => {
  const native = await loadWith(['--weights', 'native']);
  const fp32 = await loadWith(['--weights', 'fp32']);
  const auto = await loadWith([]);
  t.equal(native.status.model.weights?.placement, 'native');
  t.equal(fp32.status.model.weights?.placement, 'dequantized');
  t.equal(auto.status.model.weights?.placement, 'dequantized', 'auto picks fp32 on a CPU when it fits');
  t.same(fp32.status.model.weights?.converted.filter((c) => c.includes('-bit')), ['8-bit to float32'], 'status says what was converted');
  t.notOk(native.status.model.weights?.converted.some((c) => c.includes('-bit')), 'native converts no quantized matrix');
  t.ok(native.status.memory.model_memory_gb < 0.06, `native holds ${native.status.memory.model_memory_gb} GB`);
  t.ok(fp32.status.memory.model_memory_gb > 0.14, `fp32 holds ${fp32.status.memory.model_memory_gb} GB`);
  t.ok(native.text.length > 0 && fp32.text.length > 0);
});

t.test('auto falls back to the stored quantized weights when fp32 would not fit', async (t) => {
  const estimates = estimateLoadBytes(quantized, true);
  // The process's own memory counts against the limit; the prompt cache and a one-token prefill
  // step's activations are set aside, so keep them negligible.
  const limit = Math.round(unloadedServerBytes + (estimates.native + estimates.dequantized) / 2);
  t.ok(availableMemoryBytes() > limit, 'the machine has more than the limit, so the limit decides');
  const squeezed = await loadWith(['--memory-reserve', '0', '--prompt-cache-bytes', '0', '--prefill-chunk', '1', '--memory-limit', String(limit)]);
  t.equal(squeezed.status.model.weights?.placement, 'native');
});

t.test('a model stored in fp32 is reported as held natively, whatever the policy asked', async (t) => {
  const builtin = await loadWith([], 'tiny-qwen3');
  t.equal(builtin.status.model.weights?.policy, 'auto');
  t.equal(builtin.status.model.weights?.placement, 'native', 'nothing was dequantized');
  t.equal(builtin.status.model.weights?.dtype, 'float32');
  t.same(builtin.status.model.weights?.converted, [], 'no tensor was converted');
});
