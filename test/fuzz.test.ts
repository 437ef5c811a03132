/**
 * Bad input on every route the server registers (read from its debug 'routes' log line), then a
 * seeded fuzzer: random bodies, headers and methods through fetch, and raw byte streams through
 * node:net. The server must stay up (one process, health 200), every answer must be a
 * well-formed error or success, and memory must stay bounded.
 */
import t from 'tap';
import { parseResponses, rawRequest, type RawResponse } from './helpers/raw-http.ts';
import { json, serverStatus, startServer } from './helpers/server.ts';

const SEED = 0x5eed_0008;
const HTTP_CASES = 240;
const RAW_CASES = 120;
const CONCURRENCY = 4;
const MAX_BODY = 65536;
const MB = 2 ** 20;
/**
 * What the fuzz may leave behind in a loaded server: the prompt cache's KV state (bounded by
 * --prompt-cache-bytes) and no per-request state at all; SLACK covers the allocator's and V8's
 * heaps settling after a few hundred requests, not anything the server keeps.
 */
const PROMPT_CACHE_BYTES = 8 * MB;
const RSS_SLACK_BYTES = 16 * MB;
/** Routes that change what is stored on disk or reach the network get their own tests, not random input. */
const NOT_FUZZED = /\/api\/(pull|push|create|copy|delete|blobs)/;

interface RouteEntry {
  method: string;
  path: string;
  errors: string;
}

/** mulberry32: small, fast and reproducible from the seed. */
function generator(seed: number) {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const int = (min: number, max: number): number => min + Math.floor(next() * (max - min + 1));
  const pick = <T>(items: readonly T[]): T => items[int(0, items.length - 1)] as T;
  const chance = (p: number): boolean => next() < p;
  const text = (max: number, alphabet = 'abcXYZ019 _-./\\"\'{}[]:,%\u00e9\u65e5\ud83c\udf38\u0000\n\t'): string =>
    Array.from({ length: int(0, max) }, () => pick([...alphabet])).join('');
  const bytes = (max: number): Buffer => Buffer.from(Array.from({ length: int(1, max) }, () => int(0, 255)));
  const jsonValue = (depth = 0): unknown => {
    const kind = int(0, depth > 2 ? 5 : 7);
    if (kind === 0) return null;
    if (kind === 1) return chance(0.5);
    if (kind === 2) return pick([0, 1, -1, 2, 0.5, 1.5, -0.001, 2.0001, 1e9, -1e9, 1e308, 4096, 65536, int(-5, 5)]);
    if (kind === 3) return text(12);
    if (kind === 4) return pick(['', 'tiny-qwen3', '../../etc/passwd', '/etc/passwd', '%2e%2e%2f', 'x'.repeat(int(0, 300))]);
    if (kind === 5) return int(-3, 3);
    if (kind === 6) return Array.from({ length: int(0, 4) }, () => jsonValue(depth + 1));
    return Object.fromEntries(Array.from({ length: int(0, 4) }, () => [pick(FIELD_NAMES), jsonValue(depth + 1)]));
  };
  return { next, int, pick, chance, text, bytes, jsonValue };
}

const FIELD_NAMES = [
  'model', 'prompt', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'seed', 'stop', 'n', 'stream',
  'stream_options', 'ignore_eos', 'logprobs', 'tools', 'role', 'content', 'options', 'num_predict', 'format', 'system', 'template', 'raw',
  'images', 'think', 'name', 'frobnicate', '__proto__', 'constructor',
];
const GENERATION_PATHS = new Set(['/v1/completions', '/v1/chat/completions', '/api/generate', '/api/chat']);

/** Generations the fuzzer starts are kept to a token or two. */
function keepGenerationTiny(path: string, body: Record<string, unknown>, tiny: number): void {
  if (path.startsWith('/v1/')) {
    body.max_tokens = tiny;
    delete body.max_completion_tokens;
  } else {
    const options = typeof body.options === 'object' && body.options !== null && !Array.isArray(body.options) ? (body.options as Record<string, unknown>) : {};
    body.options = { ...options, num_predict: tiny };
  }
}

type Failure = string | null;

function checkErrorShape(route: RouteEntry | undefined, status: number, text: string): Failure {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `status ${status} with a body that is not JSON: ${JSON.stringify(text.slice(0, 200))}`;
  }
  const error = (body as { error?: unknown }).error;
  if ((route?.errors ?? 'openAiError') === 'openAiError') {
    const e = error as { message?: unknown; type?: unknown; code?: unknown } | undefined;
    if (typeof e !== 'object' || e === null || typeof e.message !== 'string' || typeof e.type !== 'string' || typeof e.code !== 'string') return `not an OpenAI error: ${text.slice(0, 200)}`;
  } else if (typeof error !== 'string') return `not an Ollama error: ${text.slice(0, 200)}`;
  return null;
}

function checkSuccess(contentType: string, text: string): Failure {
  try {
    if (contentType.startsWith('application/json')) JSON.parse(text);
    else if (contentType.startsWith('text/event-stream')) {
      for (const block of text.split('\n\n').filter(Boolean)) {
        const payload = block.replace(/^data: /, '');
        if (payload !== '[DONE]') JSON.parse(payload);
      }
    } else if (contentType.startsWith('application/x-ndjson')) {
      for (const line of text.split('\n').filter(Boolean)) JSON.parse(line);
    }
  } catch {
    return `a ${contentType} success that does not parse: ${JSON.stringify(text.slice(0, 200))}`;
  }
  return null;
}

function checkAnswer(route: RouteEntry | undefined, status: number, contentType: string, text: string, method: string): Failure {
  if (!Number.isInteger(status) || status < 100 || status > 599) return `status ${status}`;
  if (method === 'HEAD') return text === '' ? null : 'a HEAD answer with a body';
  if (status >= 400) return checkErrorShape(route, status, text);
  return checkSuccess(contentType, text);
}

/** uWS answers requests its parser refuses by itself (HTML, then it closes): they never reach a route. */
const fromUwsParser = (response: RawResponse): boolean => [400, 431, 505].includes(response.status) && !response.headers.has('content-type');

const server = await startServer(['--idle-timeout', '0', '--max-body', String(MAX_BODY), '--body-timeout', '5', '--prompt-cache-bytes', String(PROMPT_CACHE_BYTES)]);
t.teardown(() => server.stop());
const url = server.url;
const routesLine = server.logs.find((line) => line.includes('"event":"routes"'));
const routes: RouteEntry[] = routesLine ? (JSON.parse(routesLine) as { routes: RouteEntry[] }).routes : [];
const routeFor = (path: string): RouteEntry | undefined => routes.find((r) => r.path === path);
const request = async (method: string, path: string, body?: string, headers: Record<string, string> = {}) => {
  const response = await fetch(url + path, { method, headers: { 'content-type': 'application/json', ...headers }, ...(body !== undefined ? { body } : {}) });
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', text: await response.text() };
};

t.ok(routes.length >= 8, `the server logged its routes (${routes.map((r) => `${r.method} ${r.path}`).join(', ')})`);

t.test('bad input on every route gets a 4xx in its family shape', async (t) => {
  const oversized = JSON.stringify({ prompt: 'x'.repeat(MAX_BODY) });
  for (const route of routes.filter((r) => r.method === 'POST' && !NOT_FUZZED.test(r.path))) {
    const expect = async (status: number, what: string, body: string): Promise<void> => {
      const r = await request('POST', route.path, body);
      t.equal(r.status, status, `${route.path}: ${what} -> ${status}`);
      t.equal(checkErrorShape(route, r.status, r.text), null, `${route.path}: ${what} has the ${route.errors} shape`);
    };
    await expect(400, 'malformed JSON', '{"model": "tiny-qwen3",');
    await expect(400, 'a JSON array', '[1, 2]');
    await expect(400, 'a JSON string', '"hello"');
    await expect(400, 'an unknown field', '{"frobnicate": true}');
    await expect(413, 'a body over --max-body', oversized);
    const chunk = 'a'.repeat(16 * 1024);
    const chunked = `POST ${route.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${`${chunk.length.toString(16)}\r\n${chunk}\r\n`.repeat(5)}0\r\n\r\n`;
    const raw = parseResponses((await rawRequest(server.port, chunked, { endAfterWrite: false, responses: 1 })).data).responses[0];
    t.equal(raw?.status, 413, `${route.path}: a chunked body (no content-length) over --max-body -> 413`);
    if (raw) t.equal(checkErrorShape(route, raw.status, raw.body.toString()), null);
  }

  const outOfRange: [string, Record<string, unknown>][] = [
    ['/v1/completions', { prompt: 'x', max_tokens: -1 }],
    ['/v1/completions', { prompt: 'x', max_tokens: 0 }],
    ['/v1/completions', { prompt: 'x', temperature: 2.01 }],
    ['/v1/completions', { prompt: 'x', temperature: -0.5 }],
    ['/v1/completions', { prompt: 'x', top_p: 0 }],
    ['/v1/completions', { prompt: 'x', top_p: 1.01 }],
    ['/v1/completions', { prompt: 'x', n: 1_000_000 }],
    ['/v1/completions', { prompt: 42 }],
    ['/v1/completions', { max_tokens: 1 }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -5 }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], temperature: 3 }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], n: 2 }],
    ['/v1/chat/completions', { messages: 'hello' }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 7 }] }],
    ['/v1/chat/completions', {}],
    ['/api/generate', { model: 'tiny-qwen3', prompt: 'x', options: { temperature: -1 } }],
    ['/api/generate', { model: 'tiny-qwen3', prompt: 'x', options: { top_p: 0 } }],
    ['/api/generate', { model: 'tiny-qwen3', prompt: 'x', options: { top_p: 1.5 } }],
    ['/api/generate', { model: 'tiny-qwen3', prompt: 'x', options: { frobnicate: 1 } }],
    ['/api/generate', { model: 'tiny-qwen3', prompt: ['x'] }],
    ['/api/chat', { model: 'tiny-qwen3', messages: [{ role: 'user', content: 'x' }], options: { temperature: 'hot' } }],
    ['/api/chat', { model: 'tiny-qwen3', messages: [{ role: 'wizard', content: 'x' }] }],
    ['/api/chat', { model: 'tiny-qwen3', messages: {} }],
    ['/admin/load', { model: 42 }],
  ];
  for (const [path, body] of outOfRange.filter(([path]) => routeFor(path))) {
    const r = await request('POST', path, JSON.stringify(body));
    t.equal(r.status, 400, `${path} ${JSON.stringify(body)} -> 400`);
    t.equal(checkErrorShape(routeFor(path), r.status, r.text), null, 'in the route family shape');
  }

  for (const route of routes) {
    const wrong = route.method === 'POST' ? 'GET' : 'POST';
    if (routes.some((r) => r.path === route.path && r.method === wrong)) continue;
    const r = await request(wrong, route.path, wrong === 'POST' ? '{}' : undefined);
    t.equal(r.status, 405, `${wrong} ${route.path} -> 405`);
    t.equal(checkErrorShape(route, r.status, r.text), null, `405 in the ${route.errors} shape`);
  }
  for (const path of ['/v2/completions', '/api/nothing', '/admin', '/v1/completions/extra', '/%2e%2e/etc/passwd']) {
    const r = await request('GET', path);
    t.equal(r.status, 404, `${path} -> 404`);
    t.equal(checkErrorShape(undefined, r.status, r.text), null);
  }
});

t.test(`seeded fuzz: ${HTTP_CASES} random requests and ${RAW_CASES} raw byte streams`, async (t) => {
  const random = generator(SEED);
  const status = () => serverStatus(url);
  // Warm up: load the model so the memory baseline includes it.
  t.equal((await request('POST', '/v1/completions', JSON.stringify({ prompt: 'warm up', max_tokens: 1 }))).status, 200);
  const rssBefore = (await status()).memory.rss_gb;
  const fuzzable = routes.filter((r) => !NOT_FUZZED.test(r.path));
  const failures: string[] = [];

  const httpCase = async (): Promise<void> => {
    const route = random.chance(0.9) ? random.pick(fuzzable) : undefined;
    const path = route ? route.path : random.pick(['/', '/v1', '/api/', '/admin/', '/v1/models/x']) + random.text(8, 'abz09/._-%');
    const method = random.chance(0.8) && route ? route.method : random.pick(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']);
    const headers: Record<string, string> = {};
    if (random.chance(0.3)) headers['content-type'] = random.pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', '']);
    if (random.chance(0.2)) headers['x-request-id'] = random.text(40, 'abcdef0123456789-');
    if (random.chance(0.2)) headers.authorization = `Bearer ${random.text(20, 'abc123')}`;
    if (random.chance(0.2)) headers[`x-${random.text(10, 'abcdefgh')}z`] = random.text(200, 'abc xyz;=,');
    let body: string | undefined;
    if (method !== 'GET' && method !== 'HEAD') {
      const kind = random.int(0, 3);
      if (kind === 0) body = random.text(200);
      else if (kind === 1) body = JSON.stringify(random.jsonValue());
      else {
        const object = Object.fromEntries(Array.from({ length: random.int(0, 6) }, () => [random.pick(FIELD_NAMES), random.jsonValue()]));
        if (random.chance(0.5)) Object.assign(object, path.startsWith('/v1/chat') || path === '/api/chat' ? { messages: [{ role: 'user', content: random.text(30) }] } : { prompt: random.text(30) });
        if (random.chance(0.3)) object.stream = random.chance(0.5);
        if (GENERATION_PATHS.has(path)) keepGenerationTiny(path, object, random.pick([1, 2, -1, 0, 1.5]));
        body = JSON.stringify(object);
      }
    }
    const label = `${method} ${path} ${JSON.stringify(headers)} ${body?.slice(0, 160) ?? ''}`;
    try {
      const r = await request(method, path, body, headers);
      const failure = checkAnswer(route?.path === path ? route : routeFor(path), r.status, r.contentType, r.text, method);
      if (failure) failures.push(`${label}: ${failure}`);
    } catch (error) {
      failures.push(`${label}: ${(error as Error).message}`);
    }
  };

  const rawCase = async (): Promise<void> => {
    const route = random.pick(fuzzable);
    const valid = `${route.method} ${route.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`;
    const kind = random.int(0, 7);
    let payload: Buffer | string;
    let pipelined = 0;
    let methods: string[] = [];
    if (kind === 0) payload = random.bytes(2000);
    else if (kind === 1) payload = `${random.text(10, 'GETPOSXZ')} ${random.text(30)} ${random.pick(['HTTP/1.1', 'HTTP/1.0', 'HTTP/2', 'FTP/1', ''])}\r\n\r\n`;
    else if (kind === 2) payload = valid.slice(0, random.int(1, valid.length - 1));
    else if (kind === 3) payload = `GET ${route.path} HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(random.int(1024, 128 * 1024))}\r\n\r\n`;
    else if (kind === 4) payload = `GET ${route.path} HTTP/1.1\r\nHost: x\r\n${Array.from({ length: random.int(10, 400) }, (_, i) => `X-H${i}: ${random.text(10, 'abc')}`).join('\r\n')}\r\n\r\n`;
    else if (kind === 5) payload = `POST ${route.path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${random.pick(['zz', '-1', 'ffffffffffff', '10', '3'])}\r\n${random.text(20)}\r\n0\r\n\r\n`;
    else if (kind === 6) payload = `POST ${route.path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${random.pick(['abc', '-5', '99999999999999999999', '1, 2', '3'])}\r\n\r\n{"a": 1}`;
    else {
      pipelined = random.int(2, 5);
      const parts = Array.from({ length: pipelined }, () => {
        const target = random.pick(fuzzable);
        methods.push(target.method);
        const reqBody = target.method === 'POST' ? random.pick(['{', '[]', '{"frobnicate":1}', '{"model":7}']) : '';
        return `${target.method} ${target.path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${reqBody.length}\r\n\r\n${reqBody}`;
      });
      payload = parts.join('');
    }
    const result = await rawRequest(server.port, payload, pipelined > 0 ? { endAfterWrite: false, responses: pipelined } : { waitMs: 15_000 });
    const label = `raw kind ${kind}: ${JSON.stringify(payload.toString('latin1').slice(0, 400))}`;
    if (pipelined === 0) methods = [payload.toString('latin1').split(' ')[0] as string];
    const { responses, malformed } = parseResponses(result.data, methods);
    if (malformed) failures.push(`${label}: ${malformed}`);
    // uWS closes the connection when a pipelined request arrives while an earlier answer is still
    // pending (a generation, a load): then fewer answers come, and the close says so.
    if (pipelined > 0 && responses.length !== pipelined && !result.closed) failures.push(`${label}: ${responses.length} answers to ${pipelined} pipelined requests, and the connection stayed open`);
    if (!result.closed && pipelined === 0) failures.push(`${label}: the connection was neither answered and closed nor dropped in 15 s`);
    for (const response of responses) {
      if (fromUwsParser(response)) continue;
      const failure = checkAnswer(undefined, response.status, response.headers.get('content-type') ?? '', response.body.toString(), 'GET');
      // The route is unknown here for pipelined and raw cases, so any of the two error shapes is accepted.
      if (failure && response.status >= 400 && checkErrorShape({ method: '', path: '', errors: 'ollamaError' }, response.status, response.body.toString()) === null) continue;
      if (failure) failures.push(`${label}: ${failure}`);
    }
  };

  const cases = [...Array.from({ length: HTTP_CASES }, () => httpCase), ...Array.from({ length: RAW_CASES }, () => rawCase)];
  // Interleave deterministically so raw streams and requests overlap.
  cases.sort(() => random.next() - 0.5);
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < cases.length) await (cases[next++] as () => Promise<void>)();
  }));

  t.same(failures.slice(0, 20), [], `every answer is well formed (${failures.length} failures)`);
  const health = await json(`${url}/admin/health`);
  t.equal(health.status, 200, 'still healthy');
  t.equal(server.logs.filter((line) => line.includes('"event":"listening"')).length, 1, 'the same server process throughout (no restart)');
  t.notOk(server.logs.some((line) => line.includes('restarting')), 'the supervisor restarted nothing');
  t.equal(server.process.exitCode, null);
  const growth = ((await status()).memory.rss_gb - rssBefore) * 2 ** 30;
  const allowed = PROMPT_CACHE_BYTES + RSS_SLACK_BYTES;
  t.ok(growth <= allowed, `resident memory grew ${(growth / MB).toFixed(1)} MB, at most the prompt cache's ${PROMPT_CACHE_BYTES / MB} MB + ${RSS_SLACK_BYTES / MB} MB`);
});
