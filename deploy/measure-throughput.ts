/**
 * Aggregate streaming throughput through nginx (deploy/nginx/mlx-server.conf) in front of one
 * instance, then two, on this machine: N clients each stream chat completions back to back for
 * a fixed time; tokens are counted from each stream's usage chunk.
 *
 *   node --import tsx deploy/measure-throughput.ts [--clients 8] [--seconds 30] [--max-tokens 64] [--model NAME]
 */
import { parseArgs } from 'node:util';
import { findNginx, startNginx } from '../test/helpers/nginx.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';

const { values } = parseArgs({
  options: {
    clients: { type: 'string', default: '8' },
    seconds: { type: 'string', default: '30' },
    'max-tokens': { type: 'string', default: '64' },
    model: { type: 'string', default: '' },
  },
});
const clients = Number(values.clients);
const seconds = Number(values.seconds);
const maxTokens = Number(values['max-tokens']);
const model = values.model || undefined;

/** One streamed chat completion; returns its completion tokens (0 if it failed). */
async function streamOnce(base: string): Promise<number> {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Write a story about a lighthouse.' }], max_tokens: maxTokens, stream: true, stream_options: { include_usage: true } }),
  });
  const body = await response.text();
  const usage = body.split('\n').filter((line) => line.startsWith('data: {') && line.includes('"usage"')).at(-1);
  return usage ? (JSON.parse(usage.slice(6)) as { usage: { completion_tokens: number } }).usage.completion_tokens : 0;
}

async function measure(instances: number, nginxPath: string): Promise<{ instances: number; requests: number; tokens: number; tokensPerSecond: number }> {
  const servers: TestServer[] = await Promise.all(Array.from({ length: instances }, () => startServer(model ? ['--model', model] : [])));
  const balancer = await startNginx(nginxPath, servers.map((server) => server.port));
  try {
    await Promise.all(servers.map((server) => fetch(`${server.url}/admin/load`, { method: 'POST' }).then((r) => r.text())));
    await Promise.all(Array.from({ length: clients }, () => streamOnce(balancer.url)));
    let requests = 0;
    let tokens = 0;
    const started = performance.now();
    const deadline = started + seconds * 1000;
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (performance.now() < deadline) {
          const completionTokens = await streamOnce(balancer.url);
          tokens += completionTokens;
          requests++;
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    return { instances, requests, tokens, tokensPerSecond: Math.round((tokens / elapsed) * 10) / 10 };
  } finally {
    await balancer.stop();
    await Promise.all(servers.map((server) => server.stop()));
  }
}

const nginx = findNginx();
if ('missing' in nginx) throw new Error(nginx.missing);
const results = [];
for (const instances of [1, 2]) {
  const result = await measure(instances, nginx.path);
  console.log(JSON.stringify({ ...result, clients, seconds, maxTokens, model: model ?? 'tiny-qwen3' }));
  results.push(result);
}
const [one, two] = results as [{ tokensPerSecond: number }, { tokensPerSecond: number }];
console.log(`two instances / one: ${(two.tokensPerSecond / one.tokensPerSecond).toFixed(2)}x`);
