/**
 * Garbage collection on demand, for both threads. node-mlx frees an array's native memory only
 * when V8 collects its JS wrapper, and V8 cannot see that native size to schedule collections
 * itself; the main thread collects once start-up and each unload are done, so the memory it
 * reports then is what the process holds, not garbage V8 would drop seconds later.
 */
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';

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
