/**
 * Memory recovery for a GGUF model served by llama.cpp, held to the rule of helpers/memory.ts:
 * after each unload the process comes back to within RECOVERY_TOLERANCE of the weights' size above
 * a baseline settled after a first load and unload, and it does not grow over load/unload cycles.
 * The model is the built-in one written as an F32 GGUF by our converter (~165 MB), so a residue
 * of a few percent is measurable.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { describeGguf } from '../core/gguf/describe.ts';
import { assertNoLeakOverCycles, assertRecovered, settledRss, statusRss } from './helpers/memory.ts';
import { builtinModelGguf, post, startServer, tempDir } from './helpers/server.ts';

const GGUF = 'tiny-qwen3-f32';
const modelsDir = tempDir('gguf-memory-');
const ggufPath = join(modelsDir, `${GGUF}.gguf`);
builtinModelGguf(ggufPath);

const server = await startServer(['--models-dir', modelsDir], { MLX_SERVER_LLAMA_THREADS: '1' });
t.teardown(async () => {
  await server.stop();
  rmSync(modelsDir, { recursive: true, force: true });
});
const { url } = server;

const description = describeGguf(ggufPath);
const weightsBytes = description.parameters * 4;

const loadAndGenerate = async (t: Test, prompt: string): Promise<void> => {
  t.equal((await post(`${url}/admin/load`, { model: GGUF })).status, 200, 'loaded');
  const r = await post(`${url}/v1/completions`, { model: GGUF, prompt, max_tokens: 32, temperature: 0, ignore_eos: true });
  t.equal(r.status, 200);
  t.equal(r.body.usage.completion_tokens, 32);
};

let baseline = 0;

t.test('the weights are the F32 tensors of the GGUF, big enough for a residue to show', (t) => {
  t.equal(description.quantization, 'F32');
  t.ok(weightsBytes > 100 * 2 ** 20, `${(weightsBytes / 2 ** 20).toFixed(1)} MB of weights`);
  t.end();
});

/**
 * The baseline is taken after a first load and unload. The first GGUF load leaves the process a
 * fixed ~15 MB above its idle start-up level (90 -> 105 MB, in a clean-clone CI run and here),
 * which no later load adds to: the engine's own one-time cost (node-llama-cpp's addon and
 * libraries, which Node never unloads), not the model's. Every load after that must give back
 * what it took.
 */
t.test('baseline: settled after a first load and unload', async (t) => {
  const start = await settledRss(url);
  await loadAndGenerate(t, 'warm-up');
  t.equal((await post(`${url}/admin/unload`, {})).status, 200);
  const settled = await settledRss(url);
  baseline = settled.rss;
  t.comment(`idle at start ${(start.rss * 1024).toFixed(1)} MB; after the first load and unload ${(baseline * 1024).toFixed(1)} MB (settled after ${settled.seconds.toFixed(0)} s)`);
});

t.test('one load, generation and unload gives the memory back', async (t) => {
  await loadAndGenerate(t, 'first load');
  const loaded = await statusRss(url);
  t.ok((loaded - baseline) * 2 ** 30 >= weightsBytes * 0.5, `loading raised RSS by ${((loaded - baseline) * 1024).toFixed(1)} MB`);
  const unloaded = await post(`${url}/admin/unload`, {});
  t.equal(unloaded.status, 200);
  const rss = (await settledRss(url)).rss;
  t.comment(`loaded +${((loaded - baseline) * 1024).toFixed(1)} MB, after unload ${((rss - baseline) * 1024).toFixed(1)} MB`);
  assertRecovered(t, { rss, baseline, weightsBytes }, 'right after the unload');
});

t.test('no leak: five load/unload cycles', async (t) => {
  await assertNoLeakOverCycles(t, url, {
    cycles: 5,
    baseline,
    weightsBytes,
    cycle: async (index) => {
      await loadAndGenerate(t, `cycle ${index}`);
      t.equal((await post(`${url}/admin/unload`, {})).status, 200);
    },
  });
});
