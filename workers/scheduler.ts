/**
 * The worker's one loop over every active generation (continuous batching). Each round:
 * cancelled sequences leave; one prompt chunk of one newcomer is prefilled; every decoding
 * sequence (up to maxBatch) advances one token in a single batched forward pass. Then it
 * collects garbage (node-mlx frees native memory only when V8 collects the JS wrappers) and
 * yields to the event loop so new tasks and cancellations get in between rounds.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { WorkerSettings } from '../src/engine/protocol.ts';
import { collectGarbage } from '../src/runtime/gc.ts';
import type { Telemetry } from '../src/telemetry/layout.ts';
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
  private readonly sequences: Entry[] = [];
  private running = false;
  private idleCollection: NodeJS.Timeout | null = null;
  private lastFullCollection = performance.now();

  constructor(
    private readonly telemetry: Telemetry,
    private readonly limits: WorkerSettings,
  ) {}

  get size(): number {
    return this.sequences.length;
  }

  /** Resolves when the sequence has finished, for whatever reason. */
  run(sequence: Sequence): Promise<void> {
    if (this.idleCollection) clearTimeout(this.idleCollection);
    return new Promise((done, fail) => {
      this.sequences.push({ sequence, done, fail });
      if (!this.running) void this.loop();
    });
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.sequences.length > 0) {
        this.round();
        const full = performance.now() - this.lastFullCollection >= FULL_GC_INTERVAL_MS;
        collectGarbage(full);
        if (full) this.lastFullCollection = performance.now();
        await yieldToEventLoop();
      }
    } finally {
      this.running = false;
      // A full collection takes ~70 ms with a large tokenizer in the heap: run it once the
      // worker has stayed idle, not in front of a request that arrives right after this one.
      this.idleCollection = setTimeout(() => collectGarbage(true), IDLE_COLLECTION_MS);
    }
  }

  private round(): void {
    for (const entry of [...this.sequences]) {
      if (this.telemetry.isCancelled(entry.sequence.slot)) this.settle([entry], () => entry.sequence.cancel());
    }
    const newcomer = this.sequences.find((entry) => entry.sequence.inPrefill);
    if (newcomer) this.settle([newcomer], () => newcomer.sequence.prefill(this.limits.prefillChunk));
    const decoding = this.sequences.filter((entry) => !entry.sequence.inPrefill && entry !== newcomer).slice(0, this.limits.maxBatch);
    if (decoding.length === 0) return;
    this.settle(decoding, () => {
      const model = (decoding[0] as Entry).sequence.model;
      const logits = model.decodeBatch(
        decoding.map((entry) => entry.sequence.nextToken),
        decoding.map((entry) => entry.sequence.cache),
      );
      decoding.forEach((entry, row) => entry.sequence.acceptLogits(logits.index(row, -1)));
      this.telemetry.recordDecodeStep(decoding.length);
    });
    // Past maxBatch, this round's rows go to the back so that every sequence gets its turn.
    if (this.sequences.length > this.limits.maxBatch) {
      for (const entry of decoding) {
        if (!this.sequences.includes(entry)) continue;
        this.remove(entry);
        this.sequences.push(entry);
      }
    }
  }

  /** Runs `work` for these entries; a failure fails them all, and finished ones leave. */
  private settle(entries: Entry[], work: () => void): void {
    try {
      work();
    } catch (error) {
      for (const entry of entries) {
        this.remove(entry);
        entry.fail(error);
      }
      return;
    }
    for (const entry of entries) {
      if (entry.sequence.finished && this.sequences.includes(entry)) {
        this.remove(entry);
        entry.done();
      }
    }
  }

  private remove(entry: Entry): void {
    this.sequences.splice(this.sequences.indexOf(entry), 1);
  }
}
