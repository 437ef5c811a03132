/**
 * A GGUF model's llama.cpp context (KV cells per sequence, sequences) comes from the same KV budget
 * as the MLX engine's, since llama.cpp allocates it all when the context is created.
 */
import t from 'tap';
import { KV_ALLOCATION_TOKENS, llamaContextShape, type KvBudget } from '../src/models/footprint.ts';

/** A KV budget of `tokens` cells of 1000 bytes. */
const budget = (tokens: number): KvBudget => ({ bytesPerToken: 1000, budgetBytes: tokens * 1000, availableBytes: 0, modelBytes: 0, reserveBytes: 0, promptCacheBytes: 0 });

t.test('with no --gguf-context (0), the llama.cpp context is sized from the KV budget: --max-batch sequences of the trained context, shortened or fewer when the budget is short', async (t) => {
  t.same(llamaContextShape(budget(1_000_000), 4096, 16, 0), { contextSize: 4096, sequences: 16 }, 'room for all: the whole trained context each');
  t.same(llamaContextShape(budget(40_000), 4096, 16, 0), { contextSize: 2304, sequences: 16 }, 'shared: 2500 cells each, in whole allocation steps');
  t.same(llamaContextShape(budget(10_000), 4096, 16, 0), { contextSize: 2304, sequences: 4 }, 'short: fewer sequences, each of at least 2048 cells');
  t.same(llamaContextShape(budget(3000), 4096, 16, 0), { contextSize: 2816, sequences: 1 }, 'shorter still: one sequence with what there is');
  t.same(llamaContextShape(budget(1_000_000), 512, 4, 0), { contextSize: 512, sequences: 4 }, 'never more than the trained context');
  const { contextSize, sequences } = llamaContextShape(budget(123_457), 8192, 16, 0);
  t.ok(contextSize * sequences <= 123_457 && contextSize % KV_ALLOCATION_TOKENS === 0, 'never more cells than the budget holds');
});

t.test('--gguf-context caps each sequence; never above the trained context, and the KV budget still shortens it', async (t) => {
  t.same(llamaContextShape(budget(1_000_000), 32768, 16, 4096), { contextSize: 4096, sequences: 16 }, 'room for the trained context: the cap, for every sequence');
  t.same(llamaContextShape(budget(1_000_000), 2048, 16, 4096), { contextSize: 2048, sequences: 16 }, 'a cap above the trained context: the trained context');
  t.same(llamaContextShape(budget(1_000_000), 32768, 4, 600), { contextSize: 600, sequences: 4 }, 'a cap that is not a whole allocation step is kept as given');
  t.same(llamaContextShape(budget(1_000_000), 32768, 16, 128), { contextSize: 128, sequences: 16 }, 'a cap under one allocation step');
  t.same(llamaContextShape(budget(40_000), 32768, 16, 4096), { contextSize: 2304, sequences: 16 }, 'a short budget shortens the capped context as before');
  t.same(llamaContextShape(budget(10_000), 32768, 16, 1024), { contextSize: 1024, sequences: 9 }, 'a cap under 2048: sequences of the cap, as many as the budget holds');
});
