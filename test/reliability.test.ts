/** Cancellation, timeouts, shutdown, crashes and the memory guard, against real server processes. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:net';
import t from 'tap';
import { estimateLoadBytes } from '../src/models/footprint.ts';
import type { ServerStatus } from '../src/api/admin.ts';
import { builtinModelVariant, logEvents, post, sleep, serverStatus, startServer, TEST_CACHE_DIR, waitFor, type TestServer } from './helpers/server.ts';

const status = (server: TestServer): Promise<ServerStatus> => serverStatus(server.url);

/** Opens a streamed completion and returns once `chunks` SSE events have arrived. */
async function openStream(url: string, chunks: number, maxTokens = 2000): Promise<{ controller: AbortController; received: number }> {
  const controller = new AbortController();
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ prompt: 'stream me', max_tokens: maxTokens, ignore_eos: true, stream: true }),
    signal: controller.signal,
  });
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let received = 0;
  while (received < chunks) {
    const { value, done } = await reader.read();
    if (done) break;
    received += new TextDecoder().decode(value).split('data: ').length - 1;
  }
  return { controller, received };
}

t.test('a client that disconnects mid-stream stops its generation within two tokens', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const { controller } = await openStream(server.url, 5);
  controller.abort();
  const cancelled = await waitFor('the cancellation log', () => logEvents(server, 'cancelled')[0]);
  t.equal(cancelled.reason, 'client');
  // The step running when the flag is raised finishes, and one token may be on its way to the main thread.
  t.ok((cancelled.tokensAfterCancel as number) <= 2, `${cancelled.tokensAfterCancel} tokens generated after the disconnect (<= 2)`);
  const freed = await waitFor('the slot to be freed', async () => {
    const s = await status(server);
    return s.requests.active === 0 ? s : undefined;
  });
  t.equal(freed.requests.queued, 0);
  const next = await post(`${server.url}/v1/completions`, { prompt: 'after', max_tokens: 3 });
  t.equal(next.status, 200, 'the server goes on serving');
});

t.test('a client that disconnects while queued never runs', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const controller = new AbortController();
  // The first request waits in the queue while the model loads.
  const queued = fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x', max_tokens: 5 }), signal: controller.signal }).catch(() => null);
  await waitFor('the request to be queued', async () => ((await status(server)).requests.queued === 1 ? true : undefined));
  controller.abort();
  await queued;
  // It leaves the queue once the model it waited for has loaded (a load took ~50 s on a busy machine).
  const after = await waitFor('the request to leave', async () => {
    const s = await status(server);
    return s.requests.active === 0 && s.requests.queued === 0 ? s : undefined;
  }, 180_000);
  const cancelled = await waitFor('the cancellation log', () => logEvents(server, 'cancelled')[0]);
  t.equal(cancelled.reason, 'client');
  t.same(after.tokens, { generated: 0, prompt: 0 }, 'not one prompt token was prefilled nor one token generated');
});

t.test('--request-timeout cancels a long request with a 504', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--request-timeout', '3']);
  t.teardown(() => server.stop());
  t.equal((await post(`${server.url}/admin/load`, {})).status, 200);
  const r = await post(`${server.url}/v1/completions`, { prompt: 'long', max_tokens: 4000, ignore_eos: true });
  t.equal(r.status, 504);
  t.equal(r.body.error.code, 'request_timeout');
  // The 504 goes out at the deadline; the worker logs the cancellation at its next step.
  const cancelled = await waitFor('the cancellation to be logged', () => logEvents(server, 'cancelled')[0]);
  t.equal(cancelled.reason, 'timeout');
});

t.test('SIGTERM lets short generations finish, cancels long ones with an error chunk, exits 0', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--shutdown-timeout', '10']);
  t.equal((await post(`${server.url}/admin/load`, {})).status, 200);
  const short = post(`${server.url}/v1/completions`, { prompt: 'short', max_tokens: 8, ignore_eos: true });
  const longResponse = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'long', max_tokens: 4000, ignore_eos: true, stream: true }) });
  await sleep(300);
  const exit = server.stop('SIGTERM');
  await sleep(300);
  const late = await post(`${server.url}/v1/completions`, { prompt: 'late', max_tokens: 3 }).catch(() => null);
  t.ok(late === null || late.status === 503, 'a new request is refused once shutting down');
  t.equal((await short).status, 200, 'the short generation finished');
  const body = await longResponse.text();
  t.match(body, /"code":"shutting_down"/, 'the long stream ends with a shutdown error chunk');
  t.match(body, /data: \[DONE\]\n\n$/);
  t.equal(await exit, 0, 'the server exits 0');
});

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

for (const signal of ['SIGKILL', 'SIGABRT'] as const) {
  t.test(`the supervisor restarts the server after ${signal}`, async (t) => {
    const port = await freePort();
    const server = await startServer(['--idle-timeout', '0', '--port', String(port)]);
    t.teardown(() => server.stop());
    const url = `http://127.0.0.1:${port}`;
    const firstPid = server.serverPid;
    t.match(readFileSync(`/proc/${firstPid}/cmdline`, 'utf8'), /dist\/server\.js/, 'the server process runs the bundle, not tsx');
    const load = Promise.all([1, 2, 3].map((i) => post(`${url}/v1/completions`, { prompt: `load ${i}`, max_tokens: 400, ignore_eos: true }).catch(() => null)));
    await sleep(500);
    const killedAt = Date.now();
    process.kill(firstPid, signal);
    await load;
    const secondPid = await waitFor('a new server process', () => {
      const lines = server.logs.filter((l) => l.includes('"event":"listening"'));
      return lines.length > 1 ? (JSON.parse(lines.at(-1) as string).pid as number) : undefined;
    });
    t.not(secondPid, firstPid);
    t.comment(`restarted in ${Date.now() - killedAt} ms`);
    t.match(server.logs.join('\n'), new RegExp(`server exited \\(${signal}\\)`), 'the supervisor logs why');
    const r = await post(`${url}/v1/completions`, { prompt: 'after the crash', max_tokens: 3 });
    t.equal(r.status, 200, 'serving again on the same port');
  });
}

t.test('a model that fails in the worker fails only its own requests', async (t) => {
  const { modelsDir } = builtinModelVariant('broken-qwen3', { num_attention_heads: 8 });
  const server = await startServer(['--idle-timeout', '0', '--models-dir', modelsDir]);
  t.teardown(() => server.stop());
  const good = post(`${server.url}/v1/completions`, { prompt: 'fine', max_tokens: 30, ignore_eos: true });
  const bad = await post(`${server.url}/v1/completions`, { model: 'broken-qwen3', prompt: 'boom', max_tokens: 5 });
  // Its weights load, but its first forward pass throws inside the worker: an unexpected failure, not the client's fault.
  t.equal(bad.status, 500, 'the broken model answers 500');
  t.equal(bad.body.error.code, 'internal_error', `error code internal_error: ${bad.body.error.message}`);
  t.equal((await good).status, 200, 'the request on the good model succeeds');
  const after = await post(`${server.url}/v1/completions`, { prompt: 'still fine', max_tokens: 5 });
  t.equal(after.status, 200);
  t.ok((await status(server)).requests.failed >= 1, 'status counts the failure');
});

const MB = 2 ** 20;
/** Resident memory of the server process itself, read from the kernel rather than from the server. */
function residentBytes(server: TestServer): number {
  const pid = server.serverPid;
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) * 1024;
}

/**
 * The guard's estimate for the built-in model, from its safetensors headers, must cover what
 * loading it costs, and not overshoot by more than half: besides the weights it counts a full
 * 4096-token KV cache, which a short generation does not fill, and a fixed allowance for the
 * tokenizer and the worker's runtime.
 */
const ESTIMATE_OVERSHOOT = 0.5;

t.test('the memory guard', async (t) => {
  const measuring = await startServer(['--idle-timeout', '0']);
  const before = residentBytes(measuring);
  t.equal((await post(`${measuring.url}/v1/completions`, { prompt: 'measure the load', max_tokens: 16, ignore_eos: true })).status, 200);
  const measured = residentBytes(measuring) - before;
  await measuring.stop();
  const estimate = estimateLoadBytes(join(TEST_CACHE_DIR, 'tiny-qwen3'), true).native;
  const summary = `estimate ${(estimate / MB).toFixed(0)} MB, load measured ${(measured / MB).toFixed(0)} MB`;
  t.ok(estimate >= measured, `${summary}: the estimate covers the load`);
  t.ok(estimate <= (1 + ESTIMATE_OVERSHOOT) * measured, `${summary}: within ${ESTIMATE_OVERSHOOT * 100}% above it`);

  // --memory-limit bounds the whole process: what it already holds before the load (read from the
  // kernel on the measuring server, while idle), the estimate, and one small KV allocation. The
  // prompt cache and prefill activations are set aside too, so they are made negligible here. Idle
  // servers differ by a few MB, hence the margins.
  const limited = async (limitBytes: number): Promise<Awaited<ReturnType<typeof post>>> => {
    const server = await startServer(['--idle-timeout', '0', '--memory-reserve', '0', '--prompt-cache-bytes', '0', '--prefill-chunk', '1', '--memory-limit', String(limitBytes)]);
    t.teardown(() => server.stop());
    return post(`${server.url}/admin/load`, {});
  };
  const over = await limited(before + estimate - 16 * MB);
  t.equal(over.status, 503, 'a model estimated 16 MB over what --memory-limit leaves is refused');
  t.equal(over.body.error.code, 'insufficient_memory');
  t.match(over.body.error.message, /GiB/);
  t.equal((await limited(before + estimate + 32 * MB)).status, 200, 'a model estimated 32 MB under what --memory-limit leaves is loaded');
});
