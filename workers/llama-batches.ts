/**
 * What the llama.cpp engine adds around each batch node-llama-cpp decodes: the batch counted in
 * the forward-pass telemetry the MLX scheduler also writes, and the threads it runs on.
 *
 * Threads: node-llama-cpp's binaries give each decode a ggml thread pool of its own, made for
 * that decode and ended after it, unless the kept pool (native/ggml-threadpool.c) is loaded.
 * Without it, starting the extra threads costs from nothing to 20 ms on this 2-core machine,
 * depending on what else runs: a one-row decode of a 28 MB model took 1 ms on one thread and
 * 13 ms on two, while a 278 MB model's 364-token prompt took 1.3 s on one and 0.7 s on two. Even
 * with the kept pool, spinning threads on a busy machine can cost more than they give. So which
 * is faster is measured, not assumed: batches are grouped by size, each group keeps the time per
 * unit of work on one thread and on all, runs on the faster, and now and then tries the other.
 * Batches that carry prompt tokens have groups of their own, which try every thread first: a
 * prompt chunk is compute-bound where a decoding row mostly waits on memory, so a shared group's
 * figure fitted neither (a 0.5B F32 prompt batch ran 480 ms on the one thread its group had
 * learned from decode steps, against 258 ms on two).
 *
 * Order: a batch's sequences reach llama.cpp sorted by sequence id. node-llama-cpp adds them in
 * the order their tokens were queued, and llama.cpp splits a batch for a per-sequence KV cache
 * (the kind node-llama-cpp makes) into runs of consecutive sequence ids, each a forward pass of
 * its own: 16 rows added shuffled decoded in 152 ms against 51 ms sorted, on a 0.5B model.
 */
import type { LlamaContext } from 'node-llama-cpp';
import type { Telemetry } from '../core/telemetry.ts';
import type { ThreadPoolStatus } from './llama-thread-pool.ts';

/** A prompt token costs about this share of a decoding row (one read of the weights serves the whole chunk). */
const PROMPT_TOKEN_SHARE = 0.25;
/** Decode groups of at least 2^this rows try every thread first: one thread would be slow to find out. */
const LARGE_GROUP = 5;
/**
 * Weight of a slower measurement in a group's running time per unit of work. A faster one is
 * taken whole: on a shared machine noise only slows a batch down, so a fast batch is what the
 * count can do. Taken at the EWMA alone, a count that stalled for a few batches (another process
 * on a core) came back only after many retries, each rarer as it had measured slower: at one
 * stream, 15 s on one thread at 24 ms a token where two take 13.
 */
const EWMA = 0.2;
/**
 * A batch counts as at most this many times its thread count's running figure. One stalled
 * batch must not hand a group to the slower count: at one stream, two two-thread decodes of 55
 * and 48 ms among ones of 13 ms put the next 40 on one thread at 24 ms each. A lasting slowdown
 * still moves the figure, by up to a fifth a batch.
 */
const STALL_BOUND = 2;
/**
 * The thread count that is not the faster runs again, to keep its figure current, once at least
 * this many of the group's batches and this many ms have passed since it last ran. The time bound
 * is what holds at one stream, ~70 decodes a second: with the batch bound alone, one decode in 32
 * ran on one thread at twice the time, 2-3% of that stream's speed. A machine's load changes
 * over seconds, and the faster count's own figure, measured at every batch, shows it sooner.
 */
const EXPLORE_EVERY = 16;
const EXPLORE_INTERVAL_MS = 1000;
/** Both bounds of a much slower thread count's retry are multiplied by its ratio to the faster, up to this factor. */
const MAX_EXPLORE_BACKOFF = 64;

interface SizeGroup {
  /** Running ms per unit of work on one thread, and on all; undefined until measured. */
  one?: number;
  all?: number;
  batches: number;
  /** The thread count a group's first batch runs on. */
  firstTry: number;
  /** The group's batch at which the other thread count is first tried. */
  firstExplore: number;
  /** The group's batch count and the clock when the count that is not the faster last ran. */
  lastRetry: { batch: number; at: number };
}

const sizeGroup = (firstTry: number, firstExplore: number): SizeGroup => ({ batches: 0, firstTry, firstExplore, lastRetry: { batch: 0, at: 0 } });

/** The part of node-llama-cpp's native context object the batch loop drives (LlamaContext._ctx, not public). */
interface NativeContext {
  initBatch(size: number): void;
  addToBatch(sequenceId: number, firstTokenIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  setThreads(threads: number): void;
}

const isNativeContext = (value: unknown): value is NativeContext =>
  typeof value === 'object' && value !== null && ['initBatch', 'addToBatch', 'decodeBatch', 'setThreads'].every((name) => typeof (value as Record<string, unknown>)[name] === 'function');

/** One sequence's part of a batch, held until the batch is decoded so the parts can go in sorted. */
interface BatchPart {
  sequenceId: number;
  firstTokenIndex: number;
  tokens: Uint32Array;
  logitIndexes: Uint32Array;
  /** Returned to node-llama-cpp when the part is added; filled with its logits' batch positions when the batch is sent. */
  logitPositions: Uint32Array;
}

export class LlamaBatches {
  private parts: BatchPart[] = [];
  private rows = 0;
  private promptChunks = 0;
  private promptTokens = 0;
  /** By the base-2 logarithm of a batch's work (rows, plus prompt tokens at their share). */
  private readonly decodeGroups: SizeGroup[] = [];
  private readonly promptGroups: SizeGroup[] = [];

  private constructor(private readonly telemetry: Telemetry, private readonly maxThreads: number, private readonly threadPool: { status(): ThreadPoolStatus } | null) {}

  /**
   * Wraps `context`'s batch calls. `adaptive` false keeps the context's own thread count (the
   * operator set one); the telemetry is written either way. A node-llama-cpp without such a
   * native context is left as it is (its GGUF forward passes then read 0, which a test checks).
   * `threadPool`, where it is loaded, gives the count of graphs computed on the kept pool.
   */
  static install(
    context: LlamaContext,
    telemetry: Telemetry,
    { maxThreads, adaptive, threadPool = null, now = () => performance.now() }: { maxThreads: number; adaptive: boolean; threadPool?: { status(): ThreadPoolStatus } | null; now?: () => number },
  ): void {
    const native: unknown = (context as unknown as { _ctx?: unknown })._ctx;
    if (!isNativeContext(native)) return;
    const batches = new LlamaBatches(telemetry, maxThreads, threadPool);
    const { initBatch, addToBatch, decodeBatch } = native;
    // The methods are read-only on the native prototype, so the wrappers are defined on the instance.
    const define = (name: keyof NativeContext, value: unknown): void => void Object.defineProperty(native, name, { value, configurable: true });
    define('initBatch', (size: number) => {
      batches.parts = [];
      batches.rows = 0;
      batches.promptChunks = 0;
      batches.promptTokens = 0;
      initBatch.call(native, size);
    });
    define('addToBatch', (sequenceId: number, firstTokenIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array) => {
      if (tokens.length === 1) batches.rows++;
      else {
        batches.promptChunks++;
        batches.promptTokens += tokens.length;
      }
      // node-llama-cpp reads the positions only once the batch is decoded.
      const logitPositions = new Uint32Array(logitIndexes.length);
      batches.parts.push({ sequenceId, firstTokenIndex, tokens, logitIndexes, logitPositions });
      return logitPositions;
    });
    define('decodeBatch', async () => {
      for (const part of batches.parts.sort((a, b) => a.sequenceId - b.sequenceId)) {
        part.logitPositions.set(addToBatch.call(native, part.sequenceId, part.firstTokenIndex, part.tokens, part.logitIndexes));
      }
      const work = Math.max(1, batches.rows + batches.promptTokens * PROMPT_TOKEN_SHARE);
      const size = Math.floor(Math.log2(work));
      // A prompt batch on one thread is a long stall (a first token 120 ms late on a 0.5B F32
      // model), so prompt groups put their first try of it off; decode groups learn at once.
      const group = batches.promptTokens > 0
        ? (batches.promptGroups[size] ??= sizeGroup(maxThreads, EXPLORE_EVERY))
        : (batches.decodeGroups[size] ??= sizeGroup(size >= LARGE_GROUP ? maxThreads : 1, 2));
      const started = now();
      const threads = adaptive && maxThreads > 1 ? batches.threadsFor(group, started) : 0;
      if (threads > 0) native.setThreads(threads);
      await decodeBatch.call(native);
      if (threads > 0) batches.learn(group, threads, (now() - started) / work);
      batches.count();
    });
  }

  /** The thread count for the group's next batch, which starts at `at` on the clock. */
  private threadsFor(group: SizeGroup, at: number): number {
    group.batches++;
    if (group.one === undefined && group.all === undefined) return group.firstTry;
    if (group.one === undefined || group.all === undefined) {
      // Only the first-tried count is measured; the other is first tried at the group's firstExplore-th batch.
      if (group.batches < group.firstExplore) return group.firstTry;
      group.lastRetry = { batch: group.batches, at };
      return group.firstTry === 1 ? this.maxThreads : 1;
    }
    const [faster, other] = group.one <= group.all ? [1, this.maxThreads] : [this.maxThreads, 1];
    // The slower the other measured, the rarer its retry: on a busy machine more threads than
    // free cores can take 200 times as long, and each retry would be a stall for every stream.
    const backoff = Math.min(MAX_EXPLORE_BACKOFF, Math.round(Math.max(group.one, group.all) / Math.min(group.one, group.all)));
    const due = group.batches - group.lastRetry.batch >= EXPLORE_EVERY * backoff && at - group.lastRetry.at >= EXPLORE_INTERVAL_MS * backoff;
    if (!due) return faster;
    group.lastRetry = { batch: group.batches, at };
    return other;
  }

  private learn(group: SizeGroup, threads: number, msPerWork: number): void {
    const key = threads === 1 ? 'one' : 'all';
    const before = group[key];
    group[key] = before === undefined || msPerWork < before ? msPerWork : before + EWMA * (Math.min(msPerWork, before * STALL_BOUND) - before);
  }

  private count(): void {
    this.telemetry.increment('forwardPasses');
    this.telemetry.increment('forwardRows', this.rows + this.promptChunks);
    this.telemetry.increment('forwardPrefillTokens', this.promptTokens);
    if (this.threadPool) this.telemetry.write('pooledGraphs', this.threadPool.status().pooledGraphs);
  }
}
