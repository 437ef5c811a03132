/**
 * What naming a model costs a request when the Hugging Face cache is big: a fake cache of
 * --repos repositories (config.json and a small safetensors file each, laid out as the Hub's
 * client lays them out), then sequential requests that read the registry: GET /v1/models, a
 * completion naming a model that is not there (answered by the front end alone: 404) and a
 * one-token completion on the built-in model. --bin measures another checkout's server the same way.
 *
 *   node --import tsx bench/registry-index.ts [--repos 300] [--requests 200] [--bin ../other/bin/mlx-server.js]
 */
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { send } from '../src/client/api-client.ts';
import { startBenchServer } from './server-process.ts';

function fakeHubCache(dir: string, repos: number): void {
  const header = Buffer.from(JSON.stringify({ 'w.weight': { dtype: 'F32', shape: [4, 4], data_offsets: [0, 64] } }));
  const safetensors = Buffer.concat([Buffer.alloc(8), header, Buffer.alloc(64)]);
  safetensors.writeBigUInt64LE(BigInt(header.length), 0);
  const config = JSON.stringify({ model_type: 'qwen3', hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, vocab_size: 32 });
  for (let i = 0; i < repos; i++) {
    const repo = join(dir, `models--bench-org--model-${i}`);
    const commit = `${i}`.padStart(40, '0');
    const snapshot = join(repo, 'snapshots', commit);
    mkdirSync(join(repo, 'blobs'), { recursive: true });
    mkdirSync(join(repo, 'refs'), { recursive: true });
    mkdirSync(snapshot, { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), commit);
    for (const [file, contents] of [['config.json', config], ['model.safetensors', safetensors]] as const) {
      writeFileSync(join(repo, 'blobs', file), contents);
      symlinkSync(join('..', '..', 'blobs', file), join(snapshot, file));
    }
  }
}

async function timed(count: number, call: () => Promise<{ status: number }>, expected: number): Promise<string> {
  const ms: number[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    const { status } = await call();
    ms.push(performance.now() - started);
    if (status !== expected) throw new Error(`HTTP ${status}, expected ${expected}`);
  }
  ms.sort((a, b) => a - b);
  const at = (q: number): string => (ms[Math.min(ms.length - 1, Math.floor(q * ms.length))] ?? 0).toFixed(2);
  const mean = ms.reduce((sum, x) => sum + x, 0) / ms.length;
  return `mean ${mean.toFixed(2)} ms, p50 ${at(0.5)}, p99 ${at(0.99)}, max ${at(1)}`;
}

const { values } = parseArgs({ options: { repos: { type: 'string', default: '300' }, requests: { type: 'string', default: '200' }, bin: { type: 'string' } } });
const repos = Number(values.repos);
const requests = Number(values.requests);
const cache = join(tmpdir(), `registry-bench-${process.pid}`);
fakeHubCache(cache, repos);
process.env.HF_HUB_CACHE = cache;
const server = await startBenchServer([], ...(values.bin ? [values.bin] : []));
try {
  const completion = (model: string): Promise<{ status: number }> => send(`${server.url}/v1/completions`, 'POST', { model, prompt: 'hi', max_tokens: 1, temperature: 0 });
  await completion('tiny-qwen3');
  const listed = JSON.parse((await send(`${server.url}/v1/models`, 'GET')).body) as { data: unknown[] };
  console.log(`${values.bin ?? 'this checkout'}: ${listed.data.length} models listed, ${requests} sequential requests each, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`  GET /v1/models                 ${await timed(requests, () => send(`${server.url}/v1/models`, 'GET'), 200)}`);
  console.log(`  completion, unknown model (404) ${await timed(requests, () => completion('no-such-model'), 404)}`);
  console.log(`  completion, tiny-qwen3, 1 token ${await timed(requests, () => completion('tiny-qwen3'), 200)}`);
  console.log(`  load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
} finally {
  await server.stop();
  rmSync(cache, { recursive: true, force: true });
}
