/** Cancellation, timeouts, shutdown, crashes and the memory guard, against real server processes. */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import t from 'tap';
import { builtinModelVariant, json, logEvents, post, sleep, startServer, waitFor } from './helpers/server.ts';

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

t.test('a client that disconnects mid-stream is cancelled within one decode step', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const { controller } = await openStream(server.url, 5);
  controller.abort();
  const cancelled = await waitFor('the cancellation log', () => logEvents(server, 'cancelled')[0]);
  t.equal(cancelled.reason, 'client');
  t.ok((cancelled.tokensAfterCancel as number) <= 2, `${cancelled.tokensAfterCancel} tokens generated after the disconnect (<= 2)`);
  const status = await waitFor('the slot to be freed', async () => {
    const s = (await json<{ requests: { active: number; queued: number } }>(`${server.url}/admin/status`)).body;
    return s.requests.active === 0 ? s : undefined;
  });
  t.equal(status.requests.queued, 0);
  const next = await post(`${server.url}/v1/completions`, { prompt: 'after', max_tokens: 3 });
  t.equal(next.status, 200, 'the server goes on serving');
});

t.test('a client that disconnects while queued never runs', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const controller = new AbortController();
  const queued = fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x', max_tokens: 5 }), signal: controller.signal }).catch(() => null);
  await sleep(100);
  controller.abort();
  await queued;
  await waitFor('the request to leave', async () => {
    const s = (await json<{ requests: { active: number; queued: number } }>(`${server.url}/admin/status`)).body;
    return s.requests.active === 0 && s.requests.queued === 0 ? true : undefined;
  });
  t.pass('active and queued are back to zero');
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
    const firstPid = JSON.parse(server.logs.find((l) => l.includes('"event":"listening"')) as string).pid as number;
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
  t.ok(bad.status >= 400, `the broken model answers ${bad.status}`);
  t.type(bad.body.error.message, 'string');
  t.equal((await good).status, 200, 'the request on the good model succeeds');
  const after = await post(`${server.url}/v1/completions`, { prompt: 'still fine', max_tokens: 5 });
  t.equal(after.status, 200);
  const status = (await json<{ requests: { failed: number } }>(`${server.url}/admin/status`)).body;
  t.ok(status.requests.failed >= 1, 'status counts the failure');
});

t.test('the memory guard refuses a model that would not fit', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--memory-reserve', String(2 ** 50)]);
  t.teardown(() => server.stop());
  const r = await post(`${server.url}/admin/load`, {});
  t.equal(r.status, 503);
  t.equal(r.body.error.code, 'insufficient_memory');
  t.match(r.body.error.message, /GiB/);
});

