/**
 * Child process: the engine with no server. The same model and prompts as the server runs,
 * driven by a plain loop in one thread (forward, greedy sample, minor GC per token, as the
 * worker's scheduler does), so a report can show what the server adds on top.
 *
 * usage: node --import tsx --expose-gc bench/raw-engine.ts '<RawEngineJob as JSON>'
 * Prints one RawEngineResult as JSON on the last line of stdout; progress goes to stderr.
 */
import { readFileSync } from 'node:fs';
import type { WeightPlacement } from '../core/protocol.ts';
import type { RequestTiming } from './client.ts';
import { materializeDefaultModel } from '../workers/default-model.ts';
import type { LanguageModel } from '../workers/architectures/decoder.ts';
import { loadModel } from '../workers/architectures/loader.ts';
import { mx } from '../workers/architectures/mx.ts';
import { Sampler } from '../workers/sampling.ts';
import { collectGarbage } from '../core/gc.ts';
import { ModelTokenizer } from '../workers/tokenizer.ts';
import { distinctPrompt } from './prompts.ts';

export interface RawEngineJob {
  path: string;
  /** As the server held the weights, so both run the same kernels. */
  placement: WeightPlacement;
  builtin: boolean;
  prompts: { label: string; text: string }[];
  maxTokens: number;
  repeats: number;
}

export interface RawEngineResult {
  loadMs: number;
  /** Shared libraries with BLAS or LAPACK in their name that this process mapped. */
  blasLibraries: string[];
  timings: Record<string, RequestTiming[]>;
}

const GREEDY = { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 64, seed: 1 };

function generate(model: LanguageModel, promptIds: number[], maxTokens: number): RequestTiming {
  const cache = model.newCache();
  const sampler = new Sampler(GREEDY);
  const history: number[] = [];
  const chunkTimes: number[] = [];
  let input = promptIds;
  const startedAt = performance.now();
  while (history.length < maxTokens) {
    const logits = model.forward(mx.array([input], mx.int32), cache);
    const token = sampler.next(logits.index(0, -1), history);
    chunkTimes.push(performance.now());
    history.push(token);
    input = [token];
    collectGarbage(false);
  }
  return { startedAt, chunkTimes, endedAt: chunkTimes.at(-1) ?? startedAt, promptTokens: promptIds.length, completionTokens: history.length };
}

function mappedBlasLibraries(): string[] {
  const paths = readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .map((line) => line.split(/\s+/).at(-1) ?? '')
    .filter((path) => /blas|lapack/i.test(path));
  return [...new Set(paths)];
}

function run(job: RawEngineJob): RawEngineResult {
  if (job.builtin) materializeDefaultModel(job.path);
  const loadStarted = performance.now();
  const { model } = loadModel(job.path, job.placement);
  const loadMs = performance.now() - loadStarted;
  const tokenizer = new ModelTokenizer(job.path);
  const timings: Record<string, RequestTiming[]> = {};
  generate(model, tokenizer.encode('warm up', true), 2);
  for (const { label, text } of job.prompts) {
    timings[label] = [];
    for (let i = 0; i < job.repeats; i++) {
      const ids = tokenizer.encode(distinctPrompt(text), true);
      const timing = generate(model, ids, job.maxTokens);
      timings[label].push(timing);
      const seconds = (timing.endedAt - timing.startedAt) / 1000;
      process.stderr.write(`raw ${label} ${i + 1}/${job.repeats}: ${ids.length} prompt tokens, ${(timing.completionTokens / seconds).toFixed(1)} tok/s\n`);
    }
  }
  return { loadMs, blasLibraries: mappedBlasLibraries(), timings };
}

const [jobJson] = process.argv.slice(2);
if (!jobJson) {
  process.stderr.write('usage: raw-engine.ts <job json>\n');
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(run(JSON.parse(jobJson) as RawEngineJob))}\n`);
