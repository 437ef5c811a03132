/**
 * The engine's threads run at a lower priority than the main thread, which streams tokens and
 * answers health and status: on a machine whose cores the engine keeps busy, a health poll then
 * waits for the main thread's turn, not for a decode step's threads to yield a core.
 *
 * On Linux the nice value is per thread, and a thread starts with its creator's: lowering the
 * worker at its start lowers what it starts later (llama.cpp's and OpenBLAS's threads, the
 * thread pool's runner). Threads the main thread started before (libuv's pool, V8's helpers, the
 * prompt tokenizer's) are found in /proc and lowered there.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/** Lowers every thread of this process but the main one to `nice`; never raises one. */
export function lowerEngineThreads(nice: number): void {
  if (nice === 0 || process.platform !== 'linux') return;
  for (const entry of readdirSync('/proc/self/task')) {
    const tid = Number(entry);
    if (tid === process.pid) continue;
    try {
      if (getPriority(tid) < nice) setPriority(tid, nice);
    } catch {
      // The thread ended between the listing and the call.
    }
  }
}
