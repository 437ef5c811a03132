/**
 * The llama.cpp engine's per-batch wrapper, on a stand-in for node-llama-cpp's native context:
 * each batch is counted in the forward-pass telemetry, runs on the thread count measured faster
 * for batches of its size (retrying the other rarely when it is far slower), and reaches
 * llama.cpp with its sequences sorted by id.
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
    addToBatch: (_sequence: number, _first: number, batch: Uint32Array, logits: Uint32Array) => {
      tokens += batch.length;
      return new Uint32Array(logits.length);
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
  for (let row = 0; row < rows; row++) native.addToBatch(row, 0, new Uint32Array(1), new Uint32Array(1));
  if (prompt > 0) native.addToBatch(rows, 0, new Uint32Array(prompt), new Uint32Array(1));
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
  const onAll = (): number => used.filter((n) => n === 2).length;
  t.equal(used[0], 1, 'a small group first tries one thread');
  // Tried at the second batch; 12 times slower, it is retried after 16 x 12 batches of the group
  // and 12 s, of which 200 one-ms batches are far short.
  t.equal(onAll(), 1, `${onAll()} of 200 batches on two threads`);
  for (let i = 0; i < 12_000; i++) await decodeRows(native, 1);
  t.equal(onAll(), 2, 'retried once 12 s have passed');
  t.equal(used.lastIndexOf(2), 2 + 12_000 - 12, 'at the first batch after them');
});

t.test('a fast stream retries the slower count by the clock, not by its many batches', async (t) => {
  // A one-row decode: 14 ms on two threads, 25 on one (a 0.5B Q4_0 model here).
  const { context, native, used, now } = nativeContext((threads) => (threads === 1 ? 25 : 14));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 500; i++) await decodeRows(native, 1);
  const onOne = used.filter((n) => n === 1).length;
  // Twice as slow (25/14 rounds to 2): at least 32 batches and 2 s apart, 2 s being ~140 batches here.
  t.equal(used.slice(0, 2).join(), '1,2', 'one thread, then two');
  t.ok(onOne >= 4 && onOne <= 5, `${onOne} of 500 batches (7 s) on one thread: the first and one every ~2 s`);
});

t.test('a stalled batch now and then does not hand the group to the slower count', async (t) => {
  // 14 ms on two threads and 25 on one, but two decodes in a row stall at 55 and 48 ms every 50.
  let decodes = 0;
  const { context, native, used, now } = nativeContext((threads) => {
    if (threads === 1) return 25;
    decodes++;
    return decodes % 50 === 0 ? 55 : decodes % 50 === 1 && decodes > 1 ? 48 : 14;
  });
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 500; i++) await decodeRows(native, 1);
  const onOne = used.filter((n) => n === 1).length;
  t.ok(onOne <= 5, `${onOne} of 500 batches on one thread: only the first and the retries`);
});

t.test('a lasting slowdown of the faster count still moves the group', async (t) => {
  // Two threads turn 10 times slower after 100 batches (another process took a core) and stay so.
  let decodes = 0;
  const { context, native, used, now } = nativeContext((threads) => (threads === 1 ? 25 : ++decodes > 100 ? 140 : 14));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 300; i++) await decodeRows(native, 1);
  const movedAt = used.join('').indexOf('11111', 100);
  t.ok(movedAt > 0 && movedAt < 120, `back on one thread at batch ${movedAt}, within 20 batches of the slowdown`);
  const retries = used.slice(movedAt).filter((n) => n === 2).length;
  t.ok(retries <= 4, `and it stays there: ${retries} retries of two threads in the ${used.length - movedAt} batches after`);
});

t.test('after a passing slowdown the faster count is back at its first retry', async (t) => {
  // Two threads are 10 times slower for 1.5 s from 1.4 s on (another process took a core), then as before.
  let clock = 0;
  let endedAt = 0;
  const { context, native, used, now } = nativeContext((threads) => {
    if (clock >= 2900 && endedAt === 0) endedAt = used.length;
    const ms = threads === 1 ? 25 : clock >= 1400 && clock < 2900 ? 140 : 14;
    clock += ms;
    return ms;
  });
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 600; i++) await decodeRows(native, 1);
  const runs = used.join('');
  const movedAt = runs.indexOf('11111', 100);
  const backAt = runs.indexOf('22222', endedAt);
  t.ok(movedAt > 0 && movedAt < endedAt, `on one thread from batch ${movedAt}; the slowdown ended at batch ${endedAt}`);
  // Retries come 16 batches and a second apart (40 one-thread batches): the first after the slowdown measures two threads fast.
  t.ok(backAt > endedAt && backAt - endedAt <= 40, `back on two threads at batch ${backAt}, ${backAt - endedAt} batches after`);
});

t.test('large batches settle on every thread when they pay for themselves', async (t) => {
  const { context, native, used, now } = nativeContext((threads, tokens) => tokens / (threads === 1 ? 4 : 7));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 40; i++) await decodeRows(native, 0, 256);
  t.equal(used[0], 2, 'a large group first tries every thread');
  // Tried at the second batch; 1.75 times slower (rounded to 2), retried after 32 batches and 2 s.
  t.equal(used.filter((n) => n === 1).length, 1, 'one of 40 batches (1.5 s) on one thread');
  for (let i = 0; i < 40; i++) await decodeRows(native, 0, 256);
  t.equal(used.filter((n) => n === 1).length, 2, 'two of 80 batches (3 s) on one thread');
});

t.test('batches carrying a prompt learn apart from decode steps of the same size', async (t) => {
  // Decode rows only pay the start-up cost of a second thread; a prompt chunk's work halves on two.
  const { context, native, used, now } = nativeContext((threads, tokens) => (tokens > 4 ? tokens / threads : threads === 1 ? 1 : 12));
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: true, now });
  for (let i = 0; i < 20; i++) await decodeRows(native, 4);
  t.equal(used.at(-1), 1, 'four decode rows settled on one thread');
  used.length = 0;
  // 16 prompt tokens at a quarter each: work 4, the size of the four-row decode group.
  for (let i = 0; i < 10; i++) await decodeRows(native, 0, 16);
  t.equal(used[0], 2, 'a prompt batch first tries every thread');
  t.same(used.slice(0, 10), Array(10).fill(2), 'and puts off trying one thread, a long stall for a prompt');
  for (let i = 0; i < 20; i++) await decodeRows(native, 0, 16);
  t.equal(used.filter((n) => n === 1).length, 1, 'tried once on one thread (the 16th batch), it stays on two');
});

t.test('a count the operator set is left alone', async (t) => {
  const { context, native, used } = nativeContext(() => 0);
  LlamaBatches.install(context, new Telemetry(createTelemetryBuffers()), { maxThreads: 2, adaptive: false });
  for (let i = 0; i < 5; i++) await decodeRows(native, 1);
  t.same(used, [2, 2, 2, 2, 2]);
});

t.test("a batch's sequences reach llama.cpp sorted by id, and each learns where its logits are", async (t) => {
  const order: number[] = [];
  let added = 0;
  const native = {
    initBatch: () => {
      added = 0;
    },
    addToBatch: (sequence: number, _first: number, tokens: Uint32Array, logits: Uint32Array) => {
      order.push(sequence);
      added += tokens.length;
      return Uint32Array.from(logits, (index) => added - tokens.length + index);
    },
    decodeBatch: async () => {},
    setThreads: () => {},
  };
  LlamaBatches.install({ _ctx: native } as unknown as LlamaContext, new Telemetry(createTelemetryBuffers()), { maxThreads: 1, adaptive: false });
  native.initBatch();
  const positions = [5, 2, 9, 0].map((sequence) => native.addToBatch(sequence, 0, new Uint32Array(sequence === 9 ? 3 : 1), Uint32Array.of(sequence === 9 ? 2 : 0)));
  t.same(order, [], 'nothing reaches llama.cpp before the batch is decoded');
  await native.decodeBatch();
  t.same(order, [0, 2, 5, 9], 'one run of ascending ids, whatever order they were queued in');
  // In the sorted batch: 0 at 0, 2 at 1, 5 at 2, then 9's three tokens at 3-5 (its logits at the last).
  t.same(positions.map((p) => [...p]), [[2], [1], [5], [0]], 'the positions handed back are those of the sorted batch');
});
