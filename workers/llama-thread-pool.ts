/**
 * Loads the persistent llama.cpp CPU thread pool (native/ggml-threadpool.c) into the process,
 * where it must come before node-llama-cpp loads its ggml backends: loaded with RTLD_GLOBAL,
 * its ggml_graph_compute is the one they call. Loaded once per process; workers that come
 * after the first find it there.
 */
import { existsSync } from 'node:fs';
import { constants } from 'node:os';

export interface ThreadPoolStatus {
  /** Graphs computed on the kept pool, in this process. */
  pooledGraphs: number;
  /** The pool's threads; 0 until the first graph of two or more threads. */
  threads: number;
  /** The distinct threads that started pooled graphs (up to 8): 1, the addon's own. */
  startingThreads: number;
  /** Why graphs go past the pool (a ggml it was not written for), or null. */
  problem: string | null;
}

interface ThreadPoolAddon {
  status(): ThreadPoolStatus;
}

const isThreadPoolAddon = (value: unknown): value is ThreadPoolAddon =>
  typeof value === 'object' && value !== null && typeof (value as Record<string, unknown>).status === 'function';

/** By path: what each load gave, the addon or why not. */
const loaded = new Map<string, ThreadPoolAddon | string>();

function load(path: string): ThreadPoolAddon | string {
  if (!existsSync(path)) return `${path} is not built`;
  const module = { exports: {} as unknown };
  try {
    process.dlopen(module, path, constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL);
  } catch (error) {
    return `${path} does not load: ${(error as Error).message}`;
  }
  return isThreadPoolAddon(module.exports) ? module.exports : `${path} is not the thread pool addon`;
}

/** The pool's addon, or why it is not loaded (then every multi-threaded graph starts its own threads). */
export function loadThreadPool(path: string): ThreadPoolAddon | string {
  let addon = loaded.get(path);
  if (addon === undefined) loaded.set(path, (addon = load(path)));
  return addon;
}
