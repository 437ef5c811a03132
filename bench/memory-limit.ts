/**
 * `npm run bench:memory`: many clients with long prompts against the Qwen2.5-0.5B-shaped fp32
 * model under --memory-limit set to its weights plus a little headroom (1 GiB by default). Every
 * client must be answered in full (some wait for room in the KV budget) while the server's peak
 * resident memory stays under the limit. Prints the numbers; exits 1 when either fails.
 *
 * usage: npm run bench:memory -- [--clients 64] [--prompt-words 1900] [--max-tokens 16]
 *          [--headroom BYTES] [--max-batch 16] [--prefill-chunk 64] [--prompt-cache-bytes BYTES] [--cache-dir DIR]
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseServerConfig } from '../src/config.ts';
import { agent, ApiClient } from '../src/client/api-client.ts';
import { timedGeneration, type RequestTiming } from './client.ts';
import { FP32_05B, generatedModel, makeModel } from './models.ts';
import { distinctPrompt, promptOfWords } from './prompts.ts';
import { startBenchServer } from './server-process.ts';

const { values } = parseArgs({
  options: {
    clients: { type: 'string', default: '64' },
    'prompt-words': { type: 'string', default: '1900' },
    'max-tokens': { type: 'string', default: '16' },
    headroom: { type: 'string', default: String(2 ** 30) },
    'max-batch': { type: 'string', default: '16' },
    'prefill-chunk': { type: 'string', default: '64' },
    'prompt-cache-bytes': { type: 'string', default: String(64 * 2 ** 20) },
    'cache-dir': { type: 'string' },
  },
  strict: true,
});
const clients = Number(values.clients);
const maxTokens = Number(values['max-tokens']);
const started = performance.now();
const progress = (message: string): void => void process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(7)}s] ${message}\n`);
const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

/** A process's resident memory now and at its highest (the kernel's high-water mark), in bytes. */
function residentMemory(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib('VmRSS'), peak: kib('VmHWM') };
}

const cacheDir = values['cache-dir'] ?? parseServerConfig([]).cacheDir;
const model = generatedModel(FP32_05B, cacheDir, false);
await makeModel(model, cacheDir, progress);
const weightsBytes = statSync(join(model.path as string, 'model.safetensors')).size;
const limit = weightsBytes + Number(values.headroom);
const server = await startBenchServer([
  '--cache-dir', cacheDir,
  '--models-dir', join(cacheDir, 'bench-models'),
  '--model', FP32_05B,
  '--memory-limit', String(limit),
  '--memory-reserve', '0',
  '--prompt-cache-bytes', values['prompt-cache-bytes'],
  '--max-batch', values['max-batch'],
  '--prefill-chunk', values['prefill-chunk'],
  '--max-queue', String(clients),
  // The last of many long prompts waits for the others: the target is that each is answered, however late.
  '--request-timeout', '0',
]);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`${signal}: stopping the server`);
    void server.stop().finally(() => process.exit(130));
  });
}
let exitCode = 1;
try {
  progress(`server pid ${server.serverPid}; --memory-limit ${mib(limit)} = weights ${mib(weightsBytes)} + ${mib(Number(values.headroom))}`);
  const admin = new ApiClient(server.url);
  await admin.load();
  const kv = (await admin.status()).kv_cache;
  if (!kv) throw new Error('the server reports no KV budget after /admin/load');
  progress(`loaded: KV budget ${mib(kv.budget_bytes)} (${Math.floor(kv.budget_bytes / kv.bytes_per_token)} tokens at ${kv.bytes_per_token} bytes a token); resident ${mib(residentMemory(server.serverPid).rss)}`);

  const peaks = { running: 0, waiting: 0, rss: 0 };
  let finished = 0;
  const prompt = promptOfWords(Number(values['prompt-words']));
  const requests = Array.from({ length: clients }, () =>
    timedGeneration(server.url, { route: 'openai-completions', model: FP32_05B, stream: true, prompt: distinctPrompt(prompt), maxTokens })
      .then((timing): RequestTiming | Error => timing, (error: unknown) => error as Error)
      .finally(() => finished++),
  );
  const all = Promise.all(requests);
  let done = false;
  void all.finally(() => (done = true));
  let lastReport = 0;
  while (!done) {
    const status = await admin.status();
    peaks.running = Math.max(peaks.running, status.requests.active);
    peaks.waiting = Math.max(peaks.waiting, status.requests.queued);
    peaks.rss = Math.max(peaks.rss, residentMemory(server.serverPid).rss);
    if (performance.now() - lastReport > 15_000) {
      lastReport = performance.now();
      progress(`${finished}/${clients} answered; running ${status.requests.active}, waiting ${status.requests.queued}; resident ${mib(residentMemory(server.serverPid).rss)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const results = await all;
  const answered = results.filter((r): r is RequestTiming => !(r instanceof Error) && r.completionTokens === maxTokens);
  const failures = results.filter((r): r is Error => r instanceof Error);
  const highWater = residentMemory(server.serverPid).peak;
  const promptTokens = answered.map((r) => r.promptTokens);
  const seconds = answered.map((r) => (r.endedAt - r.startedAt) / 1000).sort((a, b) => a - b);
  const lines = [
    `clients ${clients}, prompts of ${Math.min(...promptTokens)}-${Math.max(...promptTokens)} tokens, ${maxTokens} new tokens each, --max-batch ${values['max-batch']}, --prefill-chunk ${values['prefill-chunk']}`,
    `answered in full: ${answered.length}/${clients}${failures.length ? `; failed: ${failures.length} (first: ${failures[0]?.message.slice(0, 200)})` : ''}`,
    `most running at once: ${peaks.running}; most waiting at once: ${peaks.waiting}`,
    `time to answer: fastest ${seconds[0]?.toFixed(1)} s, median ${seconds[Math.floor(seconds.length / 2)]?.toFixed(1)} s, slowest ${seconds.at(-1)?.toFixed(1)} s`,
    `server peak resident memory: ${mib(highWater)} (VmHWM; sampled peak ${mib(peaks.rss)}) against --memory-limit ${mib(limit)}: ${highWater < limit ? 'under' : 'OVER'} the limit by ${mib(Math.abs(limit - highWater))}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  exitCode = answered.length === clients && highWater < limit ? 0 : 1;
} finally {
  agent.destroy();
  await server.stop();
}
process.exit(exitCode);
