/**
 * The main thread's side of the prompt tokenizer's thread (workers/prompt-tokenizer.ts): one per
 * loaded MLX model, started with it and ended with it. The engine sends the MLX worker token
 * ids, so the worker spends none of its steps on tokenizing, and admission reserves a request's
 * exact KV cache instead of an upper estimate.
 */
import { Piscina } from 'piscina';
import { ServeError } from '../../core/errors.ts';
import { packagePath, PROMPT_TOKENIZER_BUNDLE } from '../paths.ts';
import type { PromptInput, PromptTokenizerReply, PromptTokenizerTask } from '../../core/protocol.ts';

/** Bundled, this file is part of dist/server.js and the thread's entry is bundled beside it; through tsx, both are TypeScript. */
const ENTRY = import.meta.url.endsWith('.ts') ? packagePath('workers', 'prompt-tokenizer.ts') : PROMPT_TOKENIZER_BUNDLE;

export class PromptTokenizerThread {
  private readonly pool: Piscina;
  /** Resolves once the model's tokenizer is read; rejects if it cannot be. */
  readonly ready: Promise<void>;

  constructor(modelPath: string) {
    this.pool = new Piscina({ filename: ENTRY, minThreads: 1, maxThreads: 1, idleTimeout: Number.POSITIVE_INFINITY, workerData: { modelPath } });
    this.ready = this.run({}).then(() => undefined);
    // Nobody may be waiting yet (it starts beside the worker's load, which can fail first).
    this.ready.catch(() => undefined);
  }

  /** The prompt as token ids: the same ids the model's tokenizer gives in the MLX worker. */
  async tokenize(prompt: PromptInput): Promise<number[]> {
    return prompt.kind === 'tokens' ? prompt.ids : this.run({ prompt });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }

  private async run(task: PromptTokenizerTask): Promise<number[]> {
    let reply: PromptTokenizerReply;
    try {
      reply = (await this.pool.run(task)) as PromptTokenizerReply;
    } catch (error) {
      throw new ServeError('internal_error', `the prompt tokenizer failed: ${(error as Error).message}`);
    }
    if (!reply.ok) throw ServeError.fromShape(reply.error);
    return reply.ids;
  }
}
