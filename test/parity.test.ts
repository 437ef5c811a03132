/**
 * Model parity with Hugging Face transformers (float32, eager attention) on the fixtures in
 * test/fixtures/parity/ (see scripts/parity/README.md). For every fixture:
 * - logits at the last prompt position, and vocab entries 0..15 at every prompt position, within
 *   max |ours - reference| < 1e-4 * max(1, logit_scale);
 * - 32 greedy tokens, decoded one at a time through the KV cache, identical to the reference;
 * - token-by-token logits through the KV cache equal to the one-pass prefill (same tolerance);
 * - a batch of two rows of the same length equal to each row run alone (same tolerance);
 * - the server's batched decoding (rows at unequal positions sharing each forward pass, prompts
 *   prefilled in chunks inside those passes, rows joining and leaving, sliding windows wrapping)
 *   giving each row the greedy tokens it gets alone, logits within the same tolerance.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { LanguageModel } from '../workers/architectures/decoder.ts';
import { loadModel } from '../workers/architectures/loader.ts';
import { mx, type MxArray } from '../workers/architectures/mx.ts';
import { ServeError } from '../core/errors.ts';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'parity');
const NEW_TOKENS = 32;
const SAMPLE_VOCAB = 16;

interface Reference {
  prompts: number[][];
  logits_last: number[][];
  logits_all_sample: number[][][];
  greedy: number[][];
  logit_scale: number;
}

const fixtureNames = readdirSync(FIXTURES, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();

function maxAbsDiff(a: number[], b: number[]): number {
  if (a.length !== b.length) return Infinity;
  return a.reduce((worst, value, i) => Math.max(worst, Math.abs(value - (b[i] as number))), 0);
}

/** Logits [positions][vocab] of one row (batch index `row`) of a [batch, positions, vocab] result. */
function rowLogits(logits: MxArray, row = 0): number[][] {
  return logits.index(row).tolist() as number[][];
}

function forward(model: LanguageModel, rows: number[][], cache = model.newCache(), allPositions = true): MxArray {
  const logits = model.forward(mx.array(rows, mx.int32), cache, allPositions);
  mx.eval(logits);
  return logits;
}

function argmax(values: number[]): number {
  return values.reduce((best, value, i) => (value > (values[best] as number) ? i : best), 0);
}

/** Greedy decoding of one prompt alone through its own cache: the tokens and each token's logits. */
function decodeAlone(model: LanguageModel, prompt: number[], count: number): { tokens: number[]; logits: number[][] } {
  const cache = model.newCache();
  let next = rowLogits(forward(model, [prompt], cache, false))[0] as number[];
  const tokens: number[] = [];
  const logits: number[][] = [];
  while (tokens.length < count) {
    logits.push(next);
    tokens.push(argmax(next));
    next = rowLogits(forward(model, [[tokens.at(-1) as number]], cache, false))[0] as number[];
  }
  return { tokens, logits };
}

interface BatchedRow {
  prompt: number[];
  /** The step at which its prompt starts to be prefilled. */
  arrives: number;
  /** Tokens it generates before it leaves the batch. */
  count: number;
}

/**
 * Runs rows through the model's batch steps as the scheduler does: prompts prefilled `chunkSize`
 * tokens at a time inside the steps, a row joining once its prompt is in, leaving after its
 * tokens. Returns each row's greedy tokens and their logits.
 */
function decodeBatched(model: LanguageModel, rows: BatchedRow[], chunkSize = 4): { tokens: number[]; logits: number[][] }[] {
  const batch = model.newBatch();
  const state = rows.map(() => ({ cache: model.newCache(), prefilled: 0, tokens: [] as number[], logits: [] as number[][] }));
  const running: number[] = [];
  const accept = (r: number, logits: number[]): void => {
    state[r]?.logits.push(logits);
    state[r]?.tokens.push(argmax(logits));
  };
  for (let step = 0; state.some((row, r) => row.tokens.length < (rows[r] as BatchedRow).count); step++) {
    const newcomers = rows.flatMap((row, r) => (step >= row.arrives && (state[r] as (typeof state)[0]).prefilled < row.prompt.length ? [r] : []));
    const chunks = newcomers.map((r) => ({ cache: (state[r] as (typeof state)[0]).cache, tokens: (rows[r] as BatchedRow).prompt.slice(state[r]?.prefilled, (state[r]?.prefilled ?? 0) + chunkSize) }));
    const logits = model.step(batch, running.map((r) => state[r]?.tokens.at(-1) as number), chunks);
    mx.eval(logits);
    const values = logits.tolist() as number[][];
    running.forEach((r, i) => accept(r, values[i] as number[]));
    newcomers.forEach((r, c) => {
      const row = state[r] as (typeof state)[0];
      row.prefilled += chunks[c]?.tokens.length ?? 0;
      if (row.prefilled < (rows[r] as BatchedRow).prompt.length) return;
      accept(r, values[running.length + c] as number[]);
      batch.join(row.cache);
      running.push(r);
    });
    for (const r of [...running]) {
      if ((state[r]?.tokens.length ?? 0) < (rows[r] as BatchedRow).count) continue;
      batch.leave(running.indexOf(r));
      running.splice(running.indexOf(r), 1);
    }
  }
  return state.map(({ tokens, logits }) => ({ tokens, logits }));
}

t.test('every fixture folder is covered', async (t) => {
  t.same(fixtureNames, ['gemma2', 'gemma3', 'llama', 'llama-bf16', 'llama-fp16', 'llama-rope-llama3', 'mistral', 'phi3', 'qwen2', 'qwen3', 'qwen3-sharded']);
});

for (const name of fixtureNames) {
  t.test(name, async (t) => {
    const dir = join(FIXTURES, name);
    const reference = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as Reference;
    const { model } = loadModel(dir);
    const tolerance = 1e-4 * Math.max(1, reference.logit_scale);
    t.equal(model.vocabSize, reference.logits_last[0]?.length, 'vocab size');

    reference.prompts.forEach((prompt, p) => {
      const prefillCache = model.newCache();
      const prefill = rowLogits(forward(model, [prompt], prefillCache));
      const last = prefill.at(-1) as number[];
      const lastDiff = maxAbsDiff(last, reference.logits_last[p] as number[]);
      t.ok(lastDiff < tolerance, `prompt ${p}: last-position logits within ${tolerance.toExponential(2)} (max abs diff ${lastDiff.toExponential(2)})`);

      const sampleDiff = Math.max(...prefill.map((position, i) => maxAbsDiff(position.slice(0, SAMPLE_VOCAB), reference.logits_all_sample[p]?.[i] as number[])));
      t.ok(sampleDiff < tolerance, `prompt ${p}: all-position logits within tolerance (max abs diff ${sampleDiff.toExponential(2)})`);

      const stepCache = model.newCache();
      const stepDiff = Math.max(...prompt.map((token, i) => maxAbsDiff(rowLogits(forward(model, [[token]], stepCache))[0] as number[], prefill[i] as number[])));
      t.ok(stepDiff < tolerance, `prompt ${p}: token-by-token decode equals one-pass prefill (max abs diff ${stepDiff.toExponential(2)})`);

      const greedy: number[] = [];
      let next = argmax(last);
      while (greedy.length < NEW_TOKENS) {
        greedy.push(next);
        next = argmax(rowLogits(forward(model, [[next]], prefillCache, false))[0] as number[]);
      }
      t.same(greedy, reference.greedy[p], `prompt ${p}: ${NEW_TOKENS} greedy tokens through the KV cache match`);
    });

    const longest = reference.prompts.at(-1) as number[];
    const rows = [longest, [...longest].reverse()];
    const batchCache = model.newCache();
    const batched = forward(model, rows, batchCache);
    const batchedStep = forward(model, [[7], [11]], batchCache, false);
    rows.forEach((row, r) => {
      const aloneCache = model.newCache();
      const alone = rowLogits(forward(model, [row], aloneCache));
      const aloneStep = rowLogits(forward(model, [[r === 0 ? 7 : 11]], aloneCache, false));
      const prefillDiff = Math.max(...alone.map((position, i) => maxAbsDiff(rowLogits(batched, r)[i] as number[], position)));
      const stepDiff = maxAbsDiff(rowLogits(batchedStep, r)[0] as number[], aloneStep[0] as number[]);
      t.ok(Math.max(prefillDiff, stepDiff) < tolerance, `batch row ${r} equals the row alone (prefill ${prefillDiff.toExponential(2)}, decode step ${stepDiff.toExponential(2)})`);
    });
  });
}

for (const name of fixtureNames) {
  t.test(`${name}: rows at unequal positions decoded in batch steps match each row alone`, async (t) => {
    const dir = join(FIXTURES, name);
    const reference = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as Reference;
    const { model } = loadModel(dir);
    const tolerance = 1e-4 * Math.max(1, reference.logit_scale);
    const [short, long] = reference.prompts as [number[], number[]];
    // Unequal prompt lengths and arrival times put rows at unequal positions; the short row
    // leaves early and a late one joins after it; 32 tokens pass every sliding window (8).
    const rows: BatchedRow[] = [
      { prompt: long, arrives: 0, count: NEW_TOKENS },
      { prompt: short, arrives: 2, count: 10 },
      { prompt: [...long].reverse(), arrives: 3, count: NEW_TOKENS },
      { prompt: [...short, ...short, ...short], arrives: 14, count: 20 },
    ];
    const batched = decodeBatched(model, rows);
    rows.forEach((row, r) => {
      const alone = decodeAlone(model, row.prompt, row.count);
      const got = batched[r] as { tokens: number[]; logits: number[][] };
      t.same(got.tokens, alone.tokens, `row ${r}: ${row.count} greedy tokens as alone`);
      const diff = Math.max(...alone.logits.map((logits, i) => maxAbsDiff(got.logits[i] as number[], logits)));
      t.ok(diff < tolerance, `row ${r}: logits within ${tolerance.toExponential(2)} of alone (max abs diff ${diff.toExponential(2)})`);
    });
    t.same(batched[0]?.tokens, reference.greedy[1], 'the first row gives the reference greedy tokens');
  });
}

for (const name of ['llama', 'gemma2']) {
  t.test(`${name}: the batch's KV rings keep every row's state as long rows join and leave`, async (t) => {
    const { model } = loadModel(join(FIXTURES, name));
    const prompt = (length: number, stride: number): number[] => Array.from({ length }, (_, i) => (i * stride + 3) % 500);
    // A 600-token row makes the rings grow past their first 256 positions while a short row
    // decodes; when it leaves they shrink back, and a 300-token newcomer grows them again.
    const rows: BatchedRow[] = [
      { prompt: prompt(600, 7), arrives: 0, count: 6 },
      { prompt: prompt(10, 11), arrives: 1, count: 40 },
      { prompt: prompt(300, 13), arrives: 12, count: 12 },
    ];
    const batched = decodeBatched(model, rows, 256);
    rows.forEach((row, r) => t.same(batched[r]?.tokens, decodeAlone(model, row.prompt, row.count).tokens, `row ${r} (${row.prompt.length}-token prompt): greedy tokens as alone`));
  });
}

t.test('a multimodal gemma3 checkpoint loads its text model', async (t) => {
  const source = join(FIXTURES, 'gemma3');
  const reference = JSON.parse(readFileSync(join(source, 'reference.json'), 'utf8')) as Reference;
  const dir = mkdtempSync(join(tmpdir(), 'parity-gemma3-multimodal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const tensors = mx.load(join(source, 'model.safetensors')) as unknown as Record<string, MxArray>;
  const renamed = Object.fromEntries(Object.entries(tensors).map(([name, tensor]) => [name.replace(/^model\./, 'language_model.model.'), tensor]));
  renamed['vision_tower.vision_model.embeddings.patch_embedding.weight'] = mx.zeros([4, 3, 2, 2], mx.float32);
  mx.saveSafetensors(join(dir, 'model.safetensors'), renamed, { format: 'pt' });
  const textConfig = JSON.parse(readFileSync(join(source, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'gemma3', text_config: textConfig }));
  const { model } = loadModel(dir);
  const last = rowLogits(forward(model, [reference.prompts[1] as number[]], model.newCache(), false))[0] as number[];
  const diff = maxAbsDiff(last, reference.logits_last[1] as number[]);
  t.ok(diff < 1e-4 * Math.max(1, reference.logit_scale), `last-position logits match the gemma3 reference (max abs diff ${diff.toExponential(2)})`);
});

t.test('an unsupported model_type is a 422 naming the supported ones', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'parity-unsupported-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'mamba' }));
  const error = (() => {
    try {
      loadModel(dir);
    } catch (caught) {
      return caught;
    }
    return null;
  })();
  t.ok(error instanceof ServeError, 'a ServeError');
  t.match(error, { code: 'unsupported_model', message: /mamba/ });
  for (const type of ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma2', 'gemma3_text', 'phi3']) t.match((error as Error).message, type, `names ${type}`);
});
