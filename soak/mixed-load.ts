/**
 * `npm run soak:mixed -- [--url URL] [--duration 5m] [--connections 200] [--max-queue 256] [--json FILE]`
 *
 * A hostile mix against one server for a while: valid requests on both API shapes (whole and
 * streamed), invalid ones, clients that abort mid-stream, clients that read slowly, and one
 * client that stops reading altogether, from many connections at once. It passes only with zero
 * crashes (the server's uptime never goes back), every valid request answered in full (a 503
 * counts as expected only when there are more connections than the server's --max-queue), every
 * invalid request answered with a well-formed 4xx, and resident memory flat (fitted growth under
 * a bound).
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { ApiClient, postRequest } from '../src/client/api-client.ts';
import { sleep } from './client.ts';
import { trend, type MemorySample } from './long-soak.ts';
import { parseDuration, markdownTable } from './report.ts';

type Kind = 'complete' | 'stream' | 'ollama' | 'invalid' | 'abort' | 'slow' | 'stall';
/** `dropped`: the server closed a stream its client had stopped reading (--max-stream-buffer). */
type Outcome = 'ok' | 'rejected' | 'lost' | 'unexpected' | 'aborted' | 'dropped';
/** Requests whose answer is generated text, which must arrive in full. */
export const VALID_KINDS: readonly Kind[] = ['complete', 'stream', 'ollama', 'slow'];

const WEIGHTS: [Kind, number][] = [
  ['complete', 25],
  ['stream', 20],
  ['ollama', 15],
  ['invalid', 20],
  ['abort', 10],
  ['slow', 10],
];

export interface MixedLoadOptions {
  url: string;
  durationMs: number;
  /** Connections sending the random mix; one more is the client that stops reading. */
  connections: number;
  maxGrowthMb: number;
  /** The server's --max-queue: only more connections than this make a 503 an expected answer. */
  maxQueue: number;
}

export interface MixedLoadResult {
  passed: boolean;
  failures: string[];
  requests: Record<Kind, Record<Outcome, number>>;
  latencyMs: Record<Kind, { p50: number; p99: number }>;
  memory: { samples: number; startMb: number; endMb: number; maxMb: number; fittedGrowthMb: number };
  restarts: number;
  durationSeconds: number;
}

const pick = (random: () => number): Kind => {
  let roll = random() * WEIGHTS.reduce((sum, [, w]) => sum + w, 0);
  for (const [kind, weight] of WEIGHTS) {
    roll -= weight;
    if (roll < 0) return kind;
  }
  return 'complete';
};

/** A seeded generator, so a failing mix can be replayed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/** A 503 is expected only while more requests can be waiting than the queue admits, and then it says so. */
function refusal(response: Response, rejectionsExpected: boolean): Outcome {
  return rejectionsExpected && response.status === 503 && response.headers.get('retry-after') !== null ? 'rejected' : 'unexpected';
}

/** Reads a streamed body to the end; `pauseMs` between reads makes a slow client. */
async function readAll(response: Response, pauseMs = 0): Promise<string> {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text + decoder.decode();
    text += decoder.decode(value, { stream: true });
    if (pauseMs > 0) await sleep(pauseMs);
  }
}

function sseComplete(text: string, maxTokens: number): boolean {
  const events = text.split('\n\n').filter(Boolean).map((block) => block.replace(/^data: /, ''));
  if (events.at(-1) !== '[DONE]') return false;
  const usage = events.slice(0, -1).map((e) => JSON.parse(e) as { usage?: { completion_tokens: number } }).find((e) => e.usage);
  return usage?.usage?.completion_tokens === maxTokens;
}

const INVALID_REQUESTS: [string, string, unknown][] = [
  ['POST', '/v1/completions', '{"prompt": "unterminated'],
  ['POST', '/v1/completions', { prompt: 'x', model: 'no-such-model' }],
  ['POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], temperature: 5 }],
  ['POST', '/api/generate', { model: 'no-such-model', prompt: 'x' }],
  ['POST', '/api/chat', '[]'],
  ['GET', '/v1/completions', null],
  ['POST', '/v1/nowhere', {}],
];

/** Answers big enough, together, to fill the socket buffers of a client that does not read. */
const STALL_FILLER = { path: '/dashboard', requests: 1000 };
/** Long enough for the stalled stream to get the few tokens that overflow --max-stream-buffer in a busy server. */
const STALL_MS = 45_000;
const STALL_HEAD_START_MS = 15_000;

/**
 * A client that pipelines enough requests to fill its socket buffers, then a streamed
 * completion, and reads nothing for STALL_MS: the server has to hold the stream's chunks and,
 * past --max-stream-buffer, drop the connection. Afterwards the client reads what it was sent:
 * 'dropped' when the connection closed before the stream ended, 'ok' when the stream arrived
 * whole (the server held it all), 'lost' when it neither ended nor closed.
 */
async function stall(url: string, prompt: string): Promise<Outcome> {
  const { hostname, port } = new URL(url);
  const body = JSON.stringify({ messages: [{ role: 'user', content: prompt }], max_tokens: 64, ignore_eos: true, stream: true });
  const socket = net.connect(Number(port), hostname);
  socket.pause();
  socket.on('error', () => undefined);
  socket.write(`GET ${STALL_FILLER.path} HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`.repeat(STALL_FILLER.requests));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  await sleep(STALL_MS);
  const received: Buffer[] = [];
  socket.on('data', (data: Buffer) => received.push(data));
  const closed = await Promise.race([new Promise<boolean>((resolve) => socket.on('close', () => resolve(true)).resume()), sleep(60_000).then(() => false)]);
  socket.destroy();
  if (Buffer.concat(received).toString('latin1').includes('data: [DONE]')) return 'ok';
  return closed ? 'dropped' : 'lost';
}

async function runOne(url: string, kind: Kind, random: () => number, rejectionsExpected: boolean): Promise<Outcome> {
  const maxTokens = 2 + Math.floor(random() * 6);
  const prompt = `mixed load ${Math.floor(random() * 1e9)}`;
  switch (kind) {
    case 'complete': {
      const response = await postRequest(`${url}/v1/completions`, { prompt, max_tokens: maxTokens, ignore_eos: true });
      if (response.status !== 200) return refusal(response, rejectionsExpected);
      const body = (await response.json()) as { usage?: { completion_tokens: number } };
      return body.usage?.completion_tokens === maxTokens ? 'ok' : 'lost';
    }
    case 'stream':
    case 'slow': {
      const response = await postRequest(`${url}/v1/chat/completions`, {
        messages: [{ role: 'user', content: prompt }],
        max_tokens: maxTokens,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      });
      if (response.status !== 200) return refusal(response, rejectionsExpected);
      return sseComplete(await readAll(response, kind === 'slow' ? 100 : 0), maxTokens) ? 'ok' : 'lost';
    }
    case 'ollama': {
      const response = await postRequest(`${url}/api/generate`, { model: 'tiny-qwen3', prompt, stream: false, options: { num_predict: maxTokens } });
      if (response.status !== 200) return refusal(response, rejectionsExpected);
      const body = (await response.json()) as { done?: boolean; eval_count?: number };
      return body.done === true && (body.eval_count ?? 0) >= 1 && (body.eval_count ?? 0) <= maxTokens ? 'ok' : 'lost';
    }
    case 'invalid': {
      const [method, path, body] = INVALID_REQUESTS[Math.floor(random() * INVALID_REQUESTS.length)] as [string, string, unknown];
      const response = await fetch(`${url}${path}`, { method, ...(body === null ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) });
      const parsed = (await response.json().catch(() => null)) as { error?: unknown } | null;
      return response.status >= 400 && response.status < 500 && parsed?.error ? 'ok' : 'unexpected';
    }
    case 'abort': {
      const controller = new AbortController();
      const response = await postRequest(`${url}/v1/completions`, { prompt, max_tokens: 200, ignore_eos: true, stream: true }, controller.signal);
      if (response.status !== 200) return refusal(response, rejectionsExpected);
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      await reader.read();
      controller.abort();
      return 'aborted';
    }
    case 'stall':
      return stall(url, prompt);
  }
}

const percentile = (values: number[], p: number): number => {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
};

export async function runMixedLoad(options: MixedLoadOptions, log: (line: string) => void = console.log): Promise<MixedLoadResult> {
  // The clock starts once the model is loaded (see below): a slow load does not eat the mix's time.
  let started = Date.now();
  let deadline = started + options.durationMs;
  const kinds: Kind[] = [...WEIGHTS.map(([kind]) => kind), 'stall'];
  const requests = Object.fromEntries(kinds.map((k) => [k, { ok: 0, rejected: 0, lost: 0, unexpected: 0, aborted: 0, dropped: 0 }])) as MixedLoadResult['requests'];
  const rejectionsExpected = options.connections > options.maxQueue;
  const latencies = Object.fromEntries(kinds.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  const failures: string[] = [];
  const memory: MemorySample[] = [];
  let restarts = 0;
  let lastUptime = -1;

  const admin = new ApiClient(options.url);
  const watch = async (): Promise<void> => {
    while (Date.now() < deadline) {
      try {
        const status = await admin.status();
        if (status.requests.uptime_seconds < lastUptime) restarts++;
        lastUptime = status.requests.uptime_seconds;
        memory.push({ t: (Date.now() - started) / 1000, rssGb: status.memory.rss_gb, loaded: true });
      } catch {
        restarts++;
      }
      const elapsed = Math.round((Date.now() - started) / 1000);
      const done = kinds.reduce((sum, k) => sum + Object.values(requests[k]).reduce((a, b) => a + b, 0), 0);
      const rss = memory.at(-1)?.rssGb;
      if (elapsed % 30 < 2) log(`[PROGRESS] ${elapsed}s: ${done} requests, rss ${rss === undefined ? '?' : (rss * 1024).toFixed(0)} MB`);
      await sleep(2000);
    }
  };

  const attempt = async (kind: Kind, random: () => number): Promise<void> => {
    const t0 = performance.now();
    let outcome: Outcome;
    try {
      outcome = await runOne(options.url, kind, random, rejectionsExpected);
    } catch (error) {
      outcome = kind === 'abort' ? 'aborted' : 'lost';
      if (outcome === 'lost' && failures.length < 10) failures.push(`${kind}: ${(error as Error).message}`);
    }
    requests[kind][outcome]++;
    if (outcome === 'ok') latencies[kind].push(performance.now() - t0);
  };
  const connection = async (seed: number, next: (random: () => number) => Kind): Promise<void> => {
    const random = seeded(seed);
    do await attempt(next(random), random);
    while (Date.now() < deadline);
  };

  // One completion loads the model. The stalled client goes first: its stream then starts within seconds
  // and overflows --max-stream-buffer. Under the full mix a stream can wait longer than the ~10 s
  // the socket layer gives a client that takes nothing, and that timeout drops it first.
  await attempt('complete', seeded(0x5eed - 1));
  started = Date.now();
  deadline = started + options.durationMs;
  const watching = watch();
  const stalled = (async () => {
    // A round that cannot finish its stall before the deadline is not started.
    do await attempt('stall', seeded(0x5eed - 2));
    while (Date.now() + STALL_MS < deadline);
  })();
  await sleep(STALL_HEAD_START_MS);
  await Promise.all([watching, stalled, ...Array.from({ length: options.connections }, (_, i) => connection(0x5eed + i, pick))]);

  const fittedGrowthMb = (trend(memory.filter(({ t }) => t >= (options.durationMs / 1000) * 0.2)).fittedGrowthGb ?? 0) * 1024;
  const lost = kinds.reduce((sum, k) => sum + requests[k].lost, 0);
  const unexpected = kinds.reduce((sum, k) => sum + requests[k].unexpected, 0);
  if (restarts > 0) failures.unshift(`the server restarted or stopped answering ${restarts} time(s)`);
  if (lost > 0) failures.unshift(`${lost} accepted request(s) did not arrive whole`);
  if (requests.stall.ok + requests.stall.dropped === 0) failures.unshift('no stalled client was answered or dropped');
  if (unexpected > 0) failures.unshift(`${unexpected} answer(s) with an unexpected status or shape`);
  if (fittedGrowthMb > options.maxGrowthMb) failures.unshift(`resident memory grew ${fittedGrowthMb.toFixed(1)} MB (fitted) > ${options.maxGrowthMb} MB`);
  const rss = memory.map(({ rssGb }) => rssGb * 1024);
  return {
    passed: failures.length === 0,
    failures,
    requests,
    latencyMs: Object.fromEntries(kinds.map((k) => [k, { p50: percentile(latencies[k], 50), p99: percentile(latencies[k], 99) }])) as MixedLoadResult['latencyMs'],
    memory: { samples: memory.length, startMb: rss[0] ?? 0, endMb: rss.at(-1) ?? 0, maxMb: Math.max(0, ...rss), fittedGrowthMb },
    restarts,
    durationSeconds: (Date.now() - started) / 1000,
  };
}

export function mixedLoadTable(result: MixedLoadResult): string[] {
  const rows = (Object.keys(result.requests) as Kind[]).map((kind) => {
    const r = result.requests[kind];
    return [kind, String(r.ok), String(r.rejected), String(r.aborted), String(r.dropped), String(r.lost), String(r.unexpected), result.latencyMs[kind].p50.toFixed(0), result.latencyMs[kind].p99.toFixed(0)];
  });
  return markdownTable(['kind', 'ok', 'rejected (503)', 'aborted', 'dropped', 'lost', 'unexpected', 'p50 ms', 'p99 ms'], rows);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: { url: { type: 'string' }, duration: { type: 'string' }, connections: { type: 'string' }, 'max-growth-mb': { type: 'string' }, 'max-queue': { type: 'string' }, json: { type: 'string' } },
  });
  const result = await runMixedLoad({
    url: values.url ?? 'http://127.0.0.1:11437',
    durationMs: parseDuration(values.duration ?? '5m') * 1000,
    connections: Number(values.connections ?? 200),
    maxGrowthMb: Number(values['max-growth-mb'] ?? 64),
    maxQueue: Number(values['max-queue'] ?? 256),
  });
  for (const line of mixedLoadTable(result)) console.log(line);
  console.log(`memory: ${result.memory.startMb.toFixed(0)} -> ${result.memory.endMb.toFixed(0)} MB (max ${result.memory.maxMb.toFixed(0)}, fitted growth ${result.memory.fittedGrowthMb.toFixed(1)} MB); restarts ${result.restarts}`);
  for (const failure of result.failures) console.log(`[FAIL] ${failure}`);
  console.log(result.passed ? '[PASS] mixed load' : '[FAIL] mixed load');
  if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2));
  process.exit(result.passed ? 0 : 1);
}
