/**
 * The prompt tokenizer's thread (a Piscina entry): renders a request's chat template and turns
 * its text into token ids with the model's own tokenizer. It runs beside the MLX worker, not on
 * it, so that a long prompt's tokenization (tens to hundreds of ms for 2,000 tokens on 2 cores)
 * does not stall every running stream's step; and off the main thread, which must keep
 * answering health at once.
 */
import { workerData } from 'node:worker_threads';
import type { PromptTokenizerReply, PromptTokenizerTask } from '../core/protocol.ts';
import { ServeError } from '../core/errors.ts';
import { collectGarbage } from '../core/gc.ts';
import { promptIds } from './prompt.ts';
import { ModelTokenizer } from './tokenizer.ts';

let tokenizer: ModelTokenizer | null = null;

export default function tokenize(task: PromptTokenizerTask): PromptTokenizerReply {
  try {
    if (!tokenizer) {
      tokenizer = new ModelTokenizer((workerData as { modelPath: string }).modelPath);
      // Reading tokenizer.json leaves ~100 MB of parsed JSON that V8 would keep for a long while.
      collectGarbage(true);
    }
    return { ok: true, ids: task.prompt ? promptIds(tokenizer, task.prompt) : [] };
  } catch (error) {
    return { ok: false, error: ServeError.from(error).toShape() };
  }
}
