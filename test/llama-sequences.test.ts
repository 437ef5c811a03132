/**
 * The llama.cpp engine's sequence pool, on a stand-in context: a request gets a free sequence
 * whose cache holds most of its prompt, else the lowest-numbered free one, so that running
 * sequences keep one run of ids (llama.cpp decodes each run of a batch as a pass of its own).
 */
import t from 'tap';
import type { LlamaContext, LlamaContextSequence } from 'node-llama-cpp';
import { SequencePool } from '../workers/llama-engine.ts';

function standInContext(size: number) {
  const made: { id: number; contextTokens: number[] }[] = [];
  const context = {
    get sequencesLeft() {
      return size - made.length;
    },
    getSequence: () => {
      const sequence = { id: made.length, contextTokens: [] as number[] };
      made.push(sequence);
      return sequence;
    },
  };
  return { context: context as unknown as LlamaContext, made };
}

const idOf = (sequence: LlamaContextSequence): number => (sequence as unknown as { id: number }).id;

t.test('a free sequence holding most of the prompt is reused; otherwise the lowest id is', async (t) => {
  const { context, made } = standInContext(4);
  const pool = new SequencePool(context);
  const taken = await Promise.all([[1], [2], [3], [4]].map((prompt) => pool.take(prompt)));
  t.same(taken.map(idOf), [0, 1, 2, 3]);
  made[0]!.contextTokens = [10, 11, 12];
  made[2]!.contextTokens = [20, 21, 22, 23];
  pool.give(taken[0]!);
  pool.give(taken[2]!);
  t.equal(idOf(await pool.take([30, 31, 32])), 0, 'nothing cached: the lowest free id, not the last one given back');
  pool.give(made[0] as unknown as LlamaContextSequence);
  t.equal(idOf(await pool.take([20, 21, 22, 99])), 2, 'three of four prompt tokens cached there');
});

t.test('when every sequence runs, a request waits for the next one given back', async (t) => {
  const { context } = standInContext(1);
  const pool = new SequencePool(context);
  const first = await pool.take([1]);
  let second: LlamaContextSequence | null = null;
  const waiting = pool.take([2]).then((sequence) => (second = sequence));
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(second, null, 'waits while the only sequence runs');
  pool.give(first);
  await waiting;
  t.equal(second, first);
});
