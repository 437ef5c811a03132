/**
 * Turning one row of logits into the next token. The repetition penalty and the top-k cut run
 * in MLX over the whole vocabulary; what survives the cut (a few dozen candidates) comes back
 * to JS for temperature, top-p, min-p and a seeded draw, which avoids sorting 150k logits per
 * token. With no top-k, the filters run in MLX over the full row, exactly.
 */
import type { SamplingParams } from '../core/protocol.ts';
import { mx, type MxArray } from './architectures/mx.ts';

function applyRepetitionPenalty(logits: MxArray, history: number[], params: SamplingParams): MxArray {
  if (params.repetitionPenalty === 1 || history.length === 0) return logits;
  const recent = [...new Set(history.slice(-params.repetitionContextSize))];
  const ids = mx.array(recent, mx.int32);
  const selected = mx.take(logits, ids, -1);
  const penalised = mx.where(mx.less(selected, 0), mx.multiply(selected, params.repetitionPenalty), mx.divide(selected, params.repetitionPenalty));
  return logits.at(ids).add(mx.subtract(penalised, selected));
}

/** splitmix32: a small seeded generator, so a request's seed fixes its whole output. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32;
  };
}

/** Filters and draws from candidate logits, in JS; `ids` maps each candidate to its token. */
function drawFromCandidates(ids: number[], logits: number[], params: SamplingParams, random: () => number): number {
  const order = logits.map((_, i) => i).sort((a, b) => (logits[b] as number) - (logits[a] as number));
  const top = logits[order[0] as number] as number;
  const weights = order.map((i) => Math.exp(((logits[i] as number) - top) / params.temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  let kept = 0;
  let mass = 0;
  for (const w of weights) {
    // A token masked to -inf (constrained decoding) has weight 0 and must never be drawn.
    if (w === 0) break;
    if (kept > 0 && mass >= params.topP * total) break;
    if (kept > 0 && w < params.minP * (weights[0] as number)) break;
    mass += w;
    kept++;
  }
  let r = random() * mass;
  for (let i = 0; i < kept; i++) {
    r -= weights[i] as number;
    if (r <= 0) return ids[order[i] as number] as number;
  }
  return ids[order[kept - 1] as number] as number;
}

export class Sampler {
  private key: MxArray;
  private readonly random: () => number;

  constructor(private readonly params: SamplingParams) {
    const seed = params.seed ?? Math.floor(Math.random() * 2 ** 31);
    this.key = mx.random.key(seed);
    this.random = seededRandom(seed);
  }

  /** Whether the token is the row's argmax whatever the history: the caller may take it from a batch's argmax. */
  get plainGreedy(): boolean {
    return this.params.temperature === 0 && this.params.repetitionPenalty === 1;
  }

  /**
   * `logits` is one row [vocab] in float32; returns the chosen token id. `constrain` masks the
   * tokens an output format refuses (to -inf), after the penalty so that no -inf is scaled.
   */
  next(logits: MxArray, history: number[], constrain?: (row: MxArray) => MxArray): number {
    const { temperature, topK, topP, minP } = this.params;
    const penalised = applyRepetitionPenalty(logits, history, this.params);
    const row = constrain ? constrain(penalised) : penalised;
    if (temperature === 0) return mx.argmax(row).item() as number;
    const vocab = row.shape[0] ?? 0;
    if (topK > 0 && topK < vocab) {
      const candidates = mx.argpartition(mx.negative(row), topK - 1).index(mx.Slice(0, topK));
      const values = mx.take(row, candidates, -1);
      return drawFromCandidates(candidates.tolist() as number[], values.tolist() as number[], this.params, this.random);
    }
    let scaled = mx.divide(row, temperature);
    if (topP < 1) scaled = this.nucleus(scaled, topP);
    if (minP > 0) scaled = mx.where(mx.less(scaled, mx.add(mx.max(scaled), Math.log(minP))), mx.array(-Infinity, mx.float32), scaled);
    const keys = mx.random.split(this.key, 2);
    this.key = keys.index(0);
    return mx.random.categorical(scaled, -1, undefined, undefined, keys.index(1)).item() as number;
  }

  /** Keeps the smallest set of tokens whose probabilities sum to at least p. */
  private nucleus(logits: MxArray, p: number): MxArray {
    const order = mx.argsort(mx.negative(logits));
    const sorted = mx.take(mx.softmax(logits, -1), order, -1);
    const keepSorted = mx.less(mx.subtract(mx.cumsum(sorted), sorted), p);
    const keep = mx.zerosLike(keepSorted).astype(mx.int32).at(order).add(keepSorted.astype(mx.int32));
    return mx.where(keep, logits, mx.array(-Infinity, mx.float32));
  }
}
