/**
 * What constrained decoding costs per token, against free decoding, in one run on the built-in
 * model (the real Qwen3 vocabulary of 151,936 tokens). Both loops run the same forward pass and
 * sampler as the worker; the constrained one also waits for xgrammar's bitmask and masks the
 * logits with it. The grammar is restarted whenever an answer completes, so every step counts.
 *
 * usage: npm run bench:constrained -- [--steps N] [--cache-dir DIR]
 */
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { OutputFormat } from '../core/protocol.ts';
import { BUILTIN_MODEL } from '../src/models/registry.ts';
import { collectGarbage } from '../core/gc.ts';
import { GrammarConstraints, type TokenConstraint } from '../workers/constraints/grammar.ts';
import { DEFAULT_MODEL_CONFIG, materializeDefaultModel } from '../workers/default-model.ts';
import { loadModel } from '../workers/architectures/loader.ts';
import { mx } from '../workers/architectures/mx.ts';
import { Sampler } from '../workers/sampling.ts';
import { ModelTokenizer } from '../workers/tokenizer.ts';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '200' }, 'cache-dir': { type: 'string', default: join(tmpdir(), 'mlx-server-bench-constrained') } } });
const steps = Number(values.steps);
const dir = join(values['cache-dir'] as string, BUILTIN_MODEL);

/** Nested objects, an array, enums, numbers, integers, booleans: what typed clients ask for. */
const FORMAT: OutputFormat = {
  type: 'json',
  closed: true,
  schema: {
    type: 'object',
    properties: {
      name: { type: 'string' },
      size: { enum: ['small', 'medium', 'large'] },
      price: { type: 'number' },
      stock: { type: 'object', properties: { count: { type: 'integer' }, available: { type: 'boolean' } }, required: ['count', 'available'] },
      tags: { type: 'array', items: { type: 'string' } },
    },
    required: ['name', 'size', 'price', 'stock', 'tags'],
  },
};

materializeDefaultModel(dir);
const { model } = loadModel(dir, 'native');
const tokenizer = new ModelTokenizer(dir);
const stopIds = new Set<number>([DEFAULT_MODEL_CONFIG.eos_token_id]);
const grammars = new GrammarConstraints(tokenizer, model.vocabSize, stopIds);
const prompt = tokenizer.encode('<|im_start|>user\nDescribe a product as JSON.<|im_end|>\n<|im_start|>assistant\n', false);

interface Run {
  forwardMs: number;
  sampleMs: number;
  /** Waiting for the next bitmask after a token was accepted. */
  maskWaitMs: number;
}

async function decode(constrained: boolean): Promise<Run> {
  const sampler = new Sampler({ temperature: 1, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 64, seed: 7 });
  const run: Run = { forwardMs: 0, sampleMs: 0, maskWaitMs: 0 };
  let cache = model.newCache();
  let constraint: TokenConstraint | null = null;
  let input = prompt;
  for (let step = 0; step < steps; step++) {
    if (constrained && !constraint) {
      constraint = await grammars.constraint(FORMAT);
      await constraint.ready();
    }
    let started = performance.now();
    const logits = model.forward(mx.array([input], mx.int32), cache);
    mx.eval(logits);
    run.forwardMs += performance.now() - started;
    started = performance.now();
    const active = constraint;
    const token = sampler.next(logits.index(0, -1), [], active ? (row) => active.mask(row) : undefined);
    run.sampleMs += performance.now() - started;
    started = performance.now();
    if (active) {
      active.advance(token);
      if (active.complete) {
        active.dispose();
        constraint = null;
        cache = model.newCache();
        input = prompt;
        continue;
      }
      await active.ready();
    }
    run.maskWaitMs += performance.now() - started;
    input = stopIds.has(token) ? prompt : [token];
    if (stopIds.has(token)) cache = model.newCache();
    collectGarbage(false);
  }
  return run;
}

let started = performance.now();
const first = await grammars.constraint(FORMAT);
const compileMs = performance.now() - started;
first.dispose();
await decode(false);
const free = await decode(false);
const constrained = await decode(true);
const perStep = (ms: number): string => (ms / steps).toFixed(2);
const total = (run: Run): number => run.forwardMs + run.sampleMs + run.maskWaitMs;
console.log(`constrained decoding, built-in model (vocabulary ${model.vocabSize}), ${steps} steps each; load average ${loadavg()[0]?.toFixed(1)}`);
console.log(`first grammar (tokenizer index + schema compile): ${compileMs.toFixed(0)} ms`);
console.log('mode         forward ms/step  sample(+mask) ms/step  mask wait ms/step  total ms/step');
for (const [label, run] of [['free', free], ['constrained', constrained]] as const) {
  console.log(`${label.padEnd(12)} ${perStep(run.forwardMs).padStart(15)}  ${perStep(run.sampleMs).padStart(21)}  ${perStep(run.maskWaitMs).padStart(17)}  ${perStep(total(run)).padStart(13)}`);
}
console.log(`constrained / free, per step: ${(total(constrained) / total(free)).toFixed(2)}x (mask and wait alone: ${perStep(constrained.sampleMs - free.sampleMs + constrained.maskWaitMs)} ms)`);
