/**
 * A GGUF model's llama.cpp context (KV cells per sequence, sequences) comes from the same KV budget
 * as the MLX engine's, since llama.cpp allocates it all when the context is created.
 */
import t from 'tap';
import { KV_ALLOCATION_TOKENS, llamaContextShape, type KvBudget } from '../src/models/footprint.ts';

t.test('the llama.cpp context is sized from the KV budget: --max-batch sequences of the trained context, shortened or fewer when the budget is short', async (t) => {
  const budget = (tokens: number): KvBudget => ({ bytesPerToken: 1000, budgetBytes: tokens * 1000, availableBytes: 0, modelBytes: 0, reserveBytes: 0, promptCacheBytes: 0 });
  t.same(llamaContextShape(budget(1_000_000), 4096, 16), { contextSize: 4096, sequences: 16 }, 'room for all: the whole trained context each');
  t.same(llamaContextShape(budget(40_000), 4096, 16), { contextSize: 2304, sequences: 16 }, 'shared: 2500 cells each, in whole allocation steps');
  t.same(llamaContextShape(budget(10_000), 4096, 16), { contextSize: 2304, sequences: 4 }, 'short: fewer sequences, each of at least 2048 cells');
  t.same(llamaContextShape(budget(3000), 4096, 16), { contextSize: 2816, sequences: 1 }, 'shorter still: one sequence with what there is');
  t.same(llamaContextShape(budget(1_000_000), 512, 4), { contextSize: 512, sequences: 4 }, 'never more than the trained context');
  const { contextSize, sequences } = llamaContextShape(budget(123_457), 8192, 16);
  t.ok(contextSize * sequences <= 123_457 && contextSize % KV_ALLOCATION_TOKENS === 0, 'never more cells than the budget holds');
});
