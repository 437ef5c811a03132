/**
 * Two servers behind Debian's nginx, configured from deploy/nginx/mlx-server.conf: concurrent
 * streaming clients on the OpenAI and Ollama routes are spread over both, and when one server
 * dies mid-run new requests keep succeeding through the other.
 */
import t from 'tap';
import { findNginx, startNginx, type RunningNginx } from './helpers/nginx.ts';
import { startServer, type TestServer } from './helpers/server.ts';

const nginx = findNginx();

interface StreamResult {
  status: number;
  /** The stream ended the way its protocol says a finished answer ends. */
  complete: boolean;
  text: string;
}

/** POSTs a streaming request and reads it to the end; `onFirstChunk` fires when the first bytes arrive. */
async function stream(url: string, body: Record<string, unknown>, onFirstChunk?: () => void): Promise<StreamResult> {
  const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  let raw = '';
  const decoder = new TextDecoder();
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      if (raw === '') onFirstChunk?.();
      raw += decoder.decode(chunk, { stream: true });
    }
  } catch {
    // The connection broke mid-stream: the answer is incomplete, which `complete` reports.
  }
  const ollama = url.includes('/api/');
  const lines = raw.split('\n').filter(Boolean);
  if (ollama) {
    const chunks = lines.map((line) => JSON.parse(line) as { done?: boolean; message?: { content: string }; response?: string });
    return { status: response.status, complete: chunks.at(-1)?.done === true, text: chunks.map((c) => c.message?.content ?? c.response ?? '').join('') };
  }
  const data = lines.filter((line) => line.startsWith('data: ')).map((line) => line.slice(6));
  const deltas = data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as { choices?: { delta?: { content?: string }; text?: string }[] });
  const text = deltas.map((d) => d.choices?.[0]?.delta?.content ?? d.choices?.[0]?.text ?? '').join('');
  return { status: response.status, complete: data.at(-1) === '[DONE]' && !raw.includes('"error"'), text };
}

const openAiChat = (base: string, maxTokens: number, onFirstChunk?: () => void): Promise<StreamResult> =>
  stream(`${base}/v1/chat/completions`, { messages: [{ role: 'user', content: 'Tell me about load balancers.' }], max_tokens: maxTokens, stream: true }, onFirstChunk);
const openAiCompletion = (base: string, maxTokens: number): Promise<StreamResult> => stream(`${base}/v1/completions`, { prompt: 'Once upon a time', max_tokens: maxTokens, stream: true });
const ollamaChat = (base: string, maxTokens: number): Promise<StreamResult> =>
  stream(`${base}/api/chat`, { model: 'tiny-qwen3', messages: [{ role: 'user', content: 'Hello there' }], options: { num_predict: maxTokens } });
const ollamaGenerate = (base: string, maxTokens: number): Promise<StreamResult> => stream(`${base}/api/generate`, { model: 'tiny-qwen3', prompt: 'Why is the sky blue?', options: { num_predict: maxTokens } });

async function requestsServed(server: TestServer): Promise<number> {
  const status = (await (await fetch(`${server.url}/admin/status`)).json()) as { requests: { total: number } };
  return status.requests.total;
}

/** Kills a server the hard way (supervisor first, so it is not restarted, then the server process). */
function killHard(server: TestServer): void {
  server.process.kill('SIGKILL');
  if (server.serverPid !== server.process.pid) process.kill(server.serverPid, 'SIGKILL');
}

if ('missing' in nginx) {
  t.plan(0, `skipped: ${nginx.missing}`);
} else {
  const servers: TestServer[] = [];
  let balancer: RunningNginx | null = null;
  t.teardown(async () => {
    await balancer?.stop();
    await Promise.all(servers.map((server) => server.stop()));
  });

  t.before(async () => {
    servers.push(...(await Promise.all([startServer(), startServer()])));
    // Load the model up front on both, so the test measures balancing, not loading.
    await Promise.all(servers.map((server) => fetch(`${server.url}/admin/load`, { method: 'POST' }).then((r) => r.text())));
    balancer = await startNginx(nginx.path, servers.map((server) => server.port));
  });

  t.test('concurrent streaming clients on both API families are spread over both servers', async (t) => {
    const base = (balancer as RunningNginx).url;
    const before = await Promise.all(servers.map(requestsServed));
    const clients = [openAiChat(base, 24), openAiCompletion(base, 24), ollamaChat(base, 24), ollamaGenerate(base, 24), openAiChat(base, 24), ollamaChat(base, 24)];
    const results = await Promise.all(clients);
    for (const [i, result] of results.entries()) {
      t.equal(result.status, 200, `client ${i} got 200`);
      t.ok(result.complete, `client ${i} streamed a complete answer`);
    }
    const after = await Promise.all(servers.map(requestsServed));
    const served = after.map((total, i) => total - (before[i] as number));
    t.equal(served.reduce((a, b) => a + b, 0), clients.length, 'every request reached a server once');
    t.ok(served.every((count) => count > 0), `least_conn used both servers (${served.join(' + ')})`);
  });

  t.test('when a server dies mid-run, new requests succeed through the other', async (t) => {
    const base = (balancer as RunningNginx).url;
    const [victim, survivor] = servers as [TestServer, TestServer];
    let streaming = 0;
    let allStreaming: () => void = () => undefined;
    const started = new Promise<void>((resolve) => (allStreaming = resolve));
    const inFlight = Array.from({ length: 4 }, () =>
      openAiChat(base, 150, () => {
        if (++streaming === 4) allStreaming();
      }),
    );
    await started;
    const victimActive = ((await (await fetch(`${victim.url}/admin/health`)).json()) as { active_requests: number }).active_requests;
    killHard(victim);
    await new Promise<void>((resolve) => victim.process.once('exit', () => resolve()));
    const interrupted = await Promise.all(inFlight);
    t.ok(victimActive > 0, `the killed server was generating (${victimActive} streams)`);
    t.ok(interrupted.some((result) => !result.complete), 'streams on the killed server were cut off');

    const survivorBefore = await requestsServed(survivor);
    const after = await Promise.all([openAiChat(base, 16), openAiCompletion(base, 16), ollamaChat(base, 16), ollamaGenerate(base, 16), openAiChat(base, 16), openAiChat(base, 16)]);
    for (const [i, result] of after.entries()) {
      t.equal(result.status, 200, `request ${i} after the kill got 200`);
      t.ok(result.complete, `request ${i} after the kill streamed a complete answer`);
    }
    for (let i = 0; i < 3; i++) t.ok((await openAiCompletion(base, 8)).complete, `sequential request ${i} after the kill succeeded`);
    t.equal((await requestsServed(survivor)) - survivorBefore, after.length + 3, 'the surviving server answered all of them');
  });
}
