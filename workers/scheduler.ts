/**
 * The worker's one loop over every active generation. Each round gives each sequence one
 * model step, then collects garbage (node-mlx frees native memory only when V8 collects the
 * JS wrappers) and yields to the event loop so new tasks and cancellations get in between
 * steps. Sequences are independent rows, so batching them into one forward pass later
 * changes only `round`.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import type { Telemetry } from '../src/telemetry/layout.ts';
import type { Sequence } from './sequence.ts';

type GcFunction = (options?: { type: 'minor' }) => void;

function exposeGc(): GcFunction {
  const existing = (globalThis as { gc?: GcFunction }).gc;
  if (existing) return existing;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as GcFunction;
}

const gc = exposeGc();

/**
 * A minor collection frees the wrappers of a step's temporary arrays (and with them their native
 * memory) in well under a millisecond; a full one also reaches what has lived longer. Only a bare
 * gc() is a full collection: V8's gc({type: 'major'}) collects nothing.
 */
export function collectGarbage(full: boolean): void {
  if (full) gc();
  else gc({ type: 'minor' });
}
const MAJOR_GC_EVERY = 1024;

export class Scheduler {
  private readonly sequences: { sequence: Sequence; done: () => void; fail: (error: unknown) => void }[] = [];
  private running = false;
  private rounds = 0;

  constructor(private readonly telemetry: Telemetry) {}

  get size(): number {
    return this.sequences.length;
  }

  /** Resolves when the sequence has finished, for whatever reason. */
  run(sequence: Sequence): Promise<void> {
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
        collectGarbage(++this.rounds % MAJOR_GC_EVERY === 0);
        await yieldToEventLoop();
      }
    } finally {
      this.running = false;
      collectGarbage(true);
    }
  }

  private round(): void {
    for (const entry of [...this.sequences]) {
      const { sequence } = entry;
      try {
        if (this.telemetry.isCancelled(sequence.slot)) sequence.cancel();
        else sequence.step();
      } catch (error) {
        this.remove(entry);
        entry.fail(error);
        continue;
      }
      if (sequence.finished) {
        this.remove(entry);
        entry.done();
      }
    }
  }

  private remove(entry: (typeof this.sequences)[number]): void {
    this.sequences.splice(this.sequences.indexOf(entry), 1);
  }
}
