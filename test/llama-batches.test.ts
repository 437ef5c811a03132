/**
 * The llama.cpp engine's per-batch wrapper, on a stand-in for node-llama-cpp's native context:
 * each batch is counted in the forward-pass telemetry, and runs on the thread count measured
 * faster for batches of its size, retrying the other rarely when it is far slower.
 */
import t from 'tap';
import type { LlamaContext } from 'node-llama-cpp';
import { createTelemetryBuffers, Telemetry } from '../core/telemetry.ts';
import { LlamaBatches } from '../workers/llama-batches.ts';

/** A native context whose decode takes `msFor(threads, tokens)` on its own clock, and remembers the threads of each one. */
function nativeContext(msFor: (threads: number, tokens: number) => number) {
  let clock = 0;
  let threads = 2;
  let tokens = 0;
  const used: number[] = [];
  const native = {
    initBatch: () => {
      tokens = 0;
    },
    addToBatch: (_sequence: number, _first: number, batch: Uint32Array) => {
      tokens += batch.length;
      return new Uint32Array();
    },
    decodeBatch: async () => {
      used.push(threads);
      clock += msFor(threads, tokens);
    },
    setThreads: (n: number) => {
      threads = n;
    },
  };
  return { context: { _ctx: native } as unknown as LlamaContext, native, used, now: () => clock };
}

async function decodeRows(native: ReturnType<typeof nativeContext>['native'], rows: number, prompt = 0): Promise<void> {
  native.initBatch();
  for (let row = 0; row < rows; row++) native.addToBatch(row, 0, new Uint32Array(1));
  if (prompt > 0) native.addToBatch(rows, 0, new Uint32Array(prompt));
  await native.decodeBatch();
}

t.test('each batch is counted: one pass, its rows and prompt chunks, its prompt tokens', async (t) => {
  const telemetry = new Telemetry(createTelemetryBuffers());
  const { context, native } = nativeContext(() => 0);
  LlamaBatches.install(context, telemetry, { maxThreads: 2, adaptive: false });
  await decodeRows(native, 3, 40);
  await decodeRows(native, 4);
  t.equal(telemetry.read('forwardPasses'), 2);
  t.equal(telemetry.read('forwardRows'), 4 + 4, 'three rows and a prompt chunk, then four rows');
  t.equal(telemetry.read('forwardPrefillTokens'), 40);
});

t.test('small batches settle on one thread when the other threads only add a start-up cost', async (t) => {
  const { context, native, used, now } = nativeContext((threads) => (threads === 1 ? 1 : 12));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 200; i++) await decodeRows(native, 1);
  const onAll = used.filter((n) => n === 2).length;
  t.equal(used[0], 1, 'a small group first tries one thread');
  // Tried at the second batch; 12 times slower, it is retried every 16 x 12 batches of the group.
  t.equal(onAll, 2, `${onAll} of 200 batches on two threads`);
});

t.test('large batches settle on every thread when they pay for themselves', async (t) => {
  const { context, native, used, now } = nativeContext((threads, tokens) => tokens / (threads === 1 ? 4 : 7));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 40; i++) await decodeRows(native, 0, 256);
  t.equal(used[0], 2, 'a large group first tries every thread');
  // Tried at the second batch; 1.75 times slower (rounded to 2), retried every 32.
  t.equal(used.filter((n) => n === 1).length, 2, 'two of 40 batches on one thread');
});

t.test('a count the operator set is left alone', async (t) => {
  const { context, native, used } = nativeContext(() => 0);
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: false });
  for (let i = 0; i < 5; i++) await decodeRows(native, 1);
  t.same(used, [2, 2, 2, 2, 2]);
});
