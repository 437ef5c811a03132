/**
 * What each fresh worker runs before it is handed any model: one matrix product checked against
 * plain JS, then a micro Qwen3 (random weights, in memory) prefills two prompts, decodes them
 * together and samples with every filter. A broken BLAS or MLX build fails here, at start-up,
 * with a clear error instead of on a client's first request. And the native code and per-thread
 * allocator state those kernels bring in belong to the process from then on, so the memory
 * measured before a load already holds them and an unload is measured against the model alone.
 */
import type { SamplingParams } from '../core/protocol.ts';
import { ServeError } from '../core/errors.ts';
import { DEFAULT_MODEL_CONFIG, qwen3Tensors } from './default-model.ts';
import { computeDtype } from './architectures/loader.ts';
import { mx } from './architectures/mx.ts';
import * as qwen3 from './architectures/qwen3.ts';
import { WeightStore } from './architectures/weights.ts';
import { Sampler } from './sampling.ts';

const MICRO_MODEL = { ...DEFAULT_MODEL_CONFIG, vocab_size: 512, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1 };
const PROMPTS = [
  [1, 2, 3, 4, 5],
  [6, 7, 8],
];
const SAMPLING: SamplingParams[] = [
  { temperature: 0, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 1 },
  { temperature: 0.8, topP: 0.9, topK: 0, minP: 0.05, repetitionPenalty: 1.1, repetitionContextSize: 20, seed: 2 },
  { temperature: 0.8, topP: 1, topK: 20, minP: 0, repetitionPenalty: 1, repetitionContextSize: 20, seed: 3 },
];

/** Small integers, so float32 holds every product and sum exactly. */
function checkMatmul(): void {
  const [m, k, n] = [8, 48, 24];
  const a = Array.from({ length: m }, (_, i) => Array.from({ length: k }, (_, j) => ((i * 7 + j * 3) % 11) - 5));
  const b = Array.from({ length: k }, (_, i) => Array.from({ length: n }, (_, j) => ((i * 5 + j * 2) % 7) - 3));
  const got = mx.matmul(mx.array(a, mx.float32), mx.array(b, mx.float32)).tolist() as number[][];
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      const want = a[i]?.reduce((sum, x, t) => sum + x * (b[t]?.[j] ?? 0), 0);
      if (got[i]?.[j] !== want) {
        throw new ServeError('runtime_check_failed', `MLX's matrix product is wrong at [${i},${j}]: ${got[i]?.[j]} instead of ${want}; check the BLAS library`);
      }
    }
  }
}

export function checkRuntime(): void {
  checkMatmul();
  const store = new WeightStore(new Map(Object.entries(qwen3Tensors(MICRO_MODEL, 1))), { default: null, overrides: new Map() }, computeDtype());
  const model = qwen3.load(store, MICRO_MODEL);
  const batch = model.newBatch();
  model.step(batch, [], [{ cache: model.newCache(), tokens: PROMPTS[0] as number[] }]);
  const prefilled = PROMPTS.map((prompt) => {
    const cache = model.newCache();
    mx.eval(model.forward(mx.array([prompt], mx.int32), cache));
    return cache;
  });
  for (const cache of prefilled) batch.join(cache);
  const logits = model.step(batch, [9, 10], [{ cache: model.newCache(), tokens: PROMPTS[1] as number[] }]);
  for (const params of SAMPLING) new Sampler(params).next(logits.index(0), PROMPTS[0] as number[]);
}
