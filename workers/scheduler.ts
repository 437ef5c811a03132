/**
 * The worker's one loop over every active generation (continuous batching). Up to maxBatch
 * sequences run; the rest wait, holding no KV state, until one leaves. Each step is ONE forward
 * pass over a budget of tokens: one for every decoding row (the running batch, each row at its
 * own position) plus up to prefillChunk prompt tokens of newcomers, in arrival order. A newcomer
 * whose prompt is done joins the batch for the next step; a finished or cancelled row leaves.
 * Then it collects garbage (node-mlx frees native memory only when V8 collects the JS wrappers)
 * and yields to the event loop so new tasks and cancellations get in between steps.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { WorkerSettings } from '../core/protocol.ts';
import { collectGarbage } from '../core/gc.ts';
import type { CancelFlags } from '../core/cancel-flags.ts';
import type { Telemetry } from '../core/telemetry.ts';
import type { RunningBatch } from './architectures/batch-cache.ts';
import type { LanguageModel, PromptChunk } from './architectures/decoder.ts';
import { mx } from './architectures/mx.ts';
import type { Sequence } from './sequence.ts';

/**
 * Arrays that outlive a few rounds (replaced KV buffers, finished sequences) reach V8's old
 * generation, which only a full collection frees, and V8 cannot see their native size to
 * schedule one itself. A full collection costs ~70 ms with a large tokenizer in the heap, so
 * under load it runs on a clock: ~1.5% of the time.
 */
const FULL_GC_INTERVAL_MS = 5000;
const IDLE_COLLECTION_MS = 500;

type Entry = { sequence: Sequence; done: () => void; fail: (error: unknown) => void };

export class Scheduler {
  /** Admitted sequences, prefilling or decoding, in arrival order (at most maxBatch). */
  private readonly running: Entry[] = [];
  private readonly waiting: Entry[] = [];
  /** The running batch and its rows' owners, row r being rows[r]. */
  private batch: { model: LanguageModel; state: RunningBatch; rows: Entry[] } | null = null;
  private looping = false;
  private idleCollection: NodeJS.Timeout | null = null;
  private lastFullCollection = performance.now();

  constructor(
    private readonly telemetry: Telemetry,
    private readonly cancelFlags: CancelFlags,
    private readonly limits: WorkerSettings,
  ) {}

  get size(): number {
    return this.running.length + this.waiting.length;
  }

  /** Resolves when the sequence has finished, for whatever reason. */
  run(sequence: Sequence): Promise<void> {
    if (this.idleCollection) clearTimeout(this.idleCollection);
    return new Promise((done, fail) => {
      this.waiting.push({ sequence, done, fail });
      if (!this.looping) void this.loop();
    });
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.size > 0) {
        this.round();
        const full = performance.now() - this.lastFullCollection >= FULL_GC_INTERVAL_MS;
        collectGarbage(full);
        if (full) this.lastFullCollection = performance.now();
        await yieldToEventLoop();
      }
    } finally {
      this.looping = false;
      // A full collection takes ~70 ms with a large tokenizer in the heap: run it once the
      // worker has stayed idle, not in front of a request that arrives right after this one.
      this.idleCollection = setTimeout(() => collectGarbage(true), IDLE_COLLECTION_MS);
    }
  }

  private round(): void {
    for (const entry of [...this.waiting]) {
      if (this.cancelFlags.isSet(entry.sequence.slot)) {
        entry.sequence.cancel();
        this.waiting.splice(this.waiting.indexOf(entry), 1);
        entry.done();
      }
    }
    for (const entry of this.running) if (this.cancelFlags.isSet(entry.sequence.slot)) entry.sequence.cancel();
    this.release();
    while (this.running.length < this.limits.maxBatch && this.waiting.length > 0) this.running.push(this.waiting.shift() as Entry);
    const first = this.running[0];
    if (!first) return;
    if (this.batch?.model !== first.sequence.model && (this.batch?.rows.length ?? 0) === 0) {
      this.batch = { model: first.sequence.model, state: first.sequence.model.newBatch(), rows: [] };
    }
    const batch = this.batch as NonNullable<Scheduler['batch']>;
    const prefilling: { entry: Entry; chunk: PromptChunk }[] = [];
    let budget = this.limits.prefillChunk;
    for (const entry of this.running) {
      if (budget === 0) break;
      if (!entry.sequence.inPrefill || entry.sequence.model !== batch.model) continue;
      const tokens = entry.sequence.nextChunk(budget);
      prefilling.push({ entry, chunk: { cache: entry.sequence.cache, tokens } });
      budget -= tokens.length;
    }
    const decoding = batch.rows;
    if (decoding.length === 0 && prefilling.length === 0) return;
    try {
      this.step(batch, prefilling);
    } catch (error) {
      // The step's state is unknown: every sequence in it fails, and the batch starts afresh.
      for (const entry of [...decoding, ...prefilling.map(({ entry }) => entry)]) {
        this.running.splice(this.running.indexOf(entry), 1);
        entry.fail(error);
      }
      this.batch = null;
      return;
    }
    for (const { entry } of prefilling) {
      if (!entry.sequence.inPrefill && !entry.sequence.finished) {
        batch.state.join(entry.sequence.cache);
        batch.rows.push(entry);
      }
    }
    this.release();
  }

  private step(batch: NonNullable<Scheduler['batch']>, prefilling: { entry: Entry; chunk: PromptChunk }[]): void {
    const rows = batch.rows.length;
    const chunks = prefilling.map(({ chunk }) => chunk);
    const logits = batch.model.step(
      batch.state,
      batch.rows.map((entry) => entry.sequence.nextToken),
      chunks,
    );
    mx.eval(logits, ...batch.state.state(), ...chunks.flatMap((chunk) => chunk.cache.flatMap((layer) => layer.state())));
    const prefillTokens = chunks.reduce((sum, chunk) => sum + chunk.tokens.length, 0);
    this.telemetry.increment('forwardPasses');
    this.telemetry.increment('forwardRows', rows + chunks.length);
    this.telemetry.increment('forwardPrefillTokens', prefillTokens);
    // One argmax for every greedy row costs one evaluation instead of one per row.
    const argmax = batch.rows.some((entry) => entry.sequence.takesArgmax) ? (mx.argmax(logits.index(mx.Slice(0, rows)), -1).tolist() as number[]) : [];
    batch.rows.forEach((entry, row) => {
      if (entry.sequence.takesArgmax) entry.sequence.acceptArgmax(argmax[row] as number);
      else entry.sequence.acceptLogits(logits.index(row));
    });
    prefilling.forEach(({ entry, chunk }, c) => entry.sequence.advancePrefill(chunk.tokens.length, logits.index(rows + c)));
  }

  /** Finished sequences leave: a batch row hands its state back to the sequence (for the prompt cache) first. */
  private release(): void {
    for (const entry of [...this.running]) {
      if (!entry.sequence.finished) continue;
      const row = this.batch?.rows.indexOf(entry) ?? -1;
      if (this.batch && row >= 0) {
        if (this.limits.promptCacheBytes > 0) entry.sequence.cache = this.batch.state.extract(row);
        this.batch.state.leave(row);
        this.batch.rows.splice(row, 1);
      }
      this.running.splice(this.running.indexOf(entry), 1);
      entry.done();
    }
  }
}
