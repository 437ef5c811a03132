import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { isLoopback, parseServerConfig } from '../src/config.ts';
import { json, startServer, TEST_CACHE_DIR } from './helpers/server.ts';

const BIN = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
const API_KEY = 'sk-test-7f3a9c0d1e2b';
const ADMIN_KEY = 'admin-test-5b8e2f71';
const PROMPT_MARKER = 'PROMPT-TEXT-MUST-NOT-BE-LOGGED-4242';
const ORIGIN = 'https://app.example';

const bearer = (key: string): Record<string, string> => ({ authorization: `Bearer ${key}` });

t.test('binding a non-loopback address needs --api-key or --insecure', async (t) => {
  t.ok(isLoopback('127.0.0.1') && isLoopback('127.3.4.5') && isLoopback('localhost') && isLoopback('::1') && isLoopback('[::1]'));
  t.notOk(isLoopback('0.0.0.0') || isLoopback('::') || isLoopback('192.168.1.10') || isLoopback('127.example.com'));
  t.throws(() => parseServerConfig(['--host', '0.0.0.0'], {}), /refusing to bind 0\.0\.0\.0 without --api-key/);
  t.equal(parseServerConfig(['--host', '0.0.0.0', '--insecure'], {}).insecure, true);
  t.equal(parseServerConfig(['--host', '0.0.0.0'], { MLX_SERVER_INSECURE: '1' }).insecure, true, 'env twin of --insecure');
  t.equal(parseServerConfig(['--host', '::'], { MLX_SERVER_API_KEY: 'k' }).apiKey, 'k', 'a key from the env twin allows it');
  t.same(parseServerConfig(['--cors-origin', 'https://a', '--cors-origin', 'https://b'], {}).corsOrigins, ['https://a', 'https://b']);

  const child = spawn(process.execPath, [BIN, 'serve', '--host', '0.0.0.0', '--port', '0', '--cache-dir', TEST_CACHE_DIR], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MLX_SERVER_API_KEY: '' } });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  t.equal(code, 2, 'exit code 2');
  t.match(stderr.split('\n')[0], /^mlx-server: refusing to bind 0\.0\.0\.0 without --api-key \(MLX_SERVER_API_KEY\); pass --insecure/, 'one clear line first');
});

t.test('keys, CORS and logs', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--admin-key', ADMIN_KEY, '--cors-origin', ORIGIN], { MLX_SERVER_API_KEY: API_KEY, MLX_SERVER_LOG_LEVEL: 'info' });
  t.teardown(() => server.stop());
  const url = server.url;

  t.test('health is open; every other route needs the key, in its family error shape', async (t) => {
    t.equal((await json(`${url}/admin/health`)).status, 200);
    for (const path of ['/admin/status', '/v1/models', '/no-such-route']) {
      const r = await json<{ error: { code: string; type: string } }>(`${url}${path}`);
      t.equal(r.status, 401, `${path} without a key`);
      t.equal(r.body.error.code, 'invalid_api_key');
      t.equal(r.body.error.type, 'authentication_error');
      const wrong = await json(`${url}${path}`, { headers: bearer('sk-wrong') });
      t.equal(wrong.status, 401, `${path} with a wrong key`);
    }
    const ollama = await json<{ error: unknown }>(`${url}/api/tags`);
    t.equal(ollama.status, 401);
    t.type(ollama.body.error, 'string', 'Ollama routes answer {"error": "..."}');
    t.equal((await json(`${url}/api/tags`, { headers: bearer(API_KEY) })).status, 200);
    t.equal((await json(`${url}/v1/models`, { headers: bearer(API_KEY) })).status, 200);
    t.equal((await json(`${url}/v1/models`, { headers: { authorization: `bearer   ${API_KEY}` } })).status, 200, 'scheme is case-insensitive');
    t.equal((await json(`${url}/v1/models`, { headers: { authorization: API_KEY } })).status, 401, 'a bare key is not a Bearer token');
    t.equal((await json(`${url}/v1/models`, { headers: bearer(ADMIN_KEY) })).status, 200, 'the admin key opens client routes too');
    t.equal((await json(`${url}/v1/models`, { headers: bearer(API_KEY.slice(0, -1)) })).status, 401, 'a prefix of the key is refused');
  });

  t.test('the probes are open on both ports; the other admin reads need the key; the main port has no admin routes', async (t) => {
    for (const base of [url, server.mainUrl]) {
      for (const path of ['/health', '/ready']) t.equal((await json(`${base}${path}`)).status, 200, `${base}${path} without a key`);
      t.equal((await json(`${base}/v1/models`)).status, 401, `${base}/v1/models needs the key`);
    }
    for (const path of ['/admin/queue', '/admin/metrics', '/admin/capabilities']) {
      t.equal((await json(`${url}${path}`)).status, 401, `${path} without a key`);
      t.equal((await json(`${url}${path}`, { headers: bearer(API_KEY) })).status, 200, `${path} with the API key`);
    }
    const viaQuery = await json<{ error: { message: string } }>(`${url}/admin/load?model_path=tiny-qwen3`, { method: 'POST', headers: bearer(API_KEY) });
    t.equal(viaQuery.status, 401, 'loading by ?model_path needs the admin key too');
    t.equal((await json(`${server.mainUrl}/admin/unload`, { method: 'POST', headers: bearer(ADMIN_KEY) })).status, 404, 'the main port serves no admin mutation, whatever the key');
  });

  t.test('admin mutations need the admin key', async (t) => {
    for (const path of ['/admin/load', '/admin/unload']) {
      const r = await json<{ error: { message: string } }>(`${url}${path}`, { method: 'POST', headers: bearer(API_KEY), body: '{"model":"no-such"}' });
      t.equal(r.status, 401, `${path} with the API key`);
      t.match(r.body.error.message, /admin key/);
    }
    const unload = await json<{ error: { code: string } }>(`${url}/admin/unload`, { method: 'POST', headers: bearer(ADMIN_KEY) });
    t.equal(unload.status, 409, 'the admin key gets through (nothing is loaded yet)');
    t.equal(unload.body.error.code, 'nothing_loaded');
  });

  t.test('CORS: preflight answered without a key, headers on responses for the allowed origin only', async (t) => {
    const preflight = await fetch(`${url}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' } });
    t.equal(preflight.status, 204);
    t.equal(preflight.headers.get('access-control-allow-origin'), ORIGIN);
    t.match(preflight.headers.get('access-control-allow-methods') ?? '', /POST/);
    t.match(preflight.headers.get('access-control-allow-headers') ?? '', /authorization/);
    const allowed = await fetch(`${url}/v1/models`, { headers: { origin: ORIGIN, ...bearer(API_KEY) } });
    t.equal(allowed.headers.get('access-control-allow-origin'), ORIGIN);
    const refusedAuth = await fetch(`${url}/v1/models`, { headers: { origin: ORIGIN } });
    t.equal(refusedAuth.status, 401);
    t.equal(refusedAuth.headers.get('access-control-allow-origin'), ORIGIN, 'errors carry the headers too, so the browser can read them');
    const other = await fetch(`${url}/v1/models`, { headers: { origin: 'https://evil.example', ...bearer(API_KEY) } });
    t.equal(other.headers.get('access-control-allow-origin'), null, 'another origin gets no grant');
    t.equal((await fetch(`${url}/nowhere`, { method: 'OPTIONS', headers: { origin: ORIGIN } })).status, 404, 'no preflight for an unknown route');
  });

  t.test('no prompt text and no keys in the logs at info', async (t) => {
    const completion = await json(`${url}/v1/completions`, { method: 'POST', headers: bearer(API_KEY), body: JSON.stringify({ prompt: PROMPT_MARKER, max_tokens: 2 }) });
    t.equal(completion.status, 200);
    const chat = await json(`${url}/api/chat`, { method: 'POST', headers: bearer(API_KEY), body: JSON.stringify({ model: 'tiny-qwen3', messages: [{ role: 'user', content: PROMPT_MARKER }], stream: false, options: { num_predict: 2 } }) });
    t.equal(chat.status, 200);
    const refused = await json(`${url}/v1/completions`, { method: 'POST', headers: bearer(API_KEY), body: JSON.stringify({ prompt: PROMPT_MARKER, max_tokens: -1 }) });
    t.equal(refused.status, 400);
    await json(`${url}/v1/completions`, { method: 'POST', headers: bearer(`${API_KEY}x`), body: JSON.stringify({ prompt: PROMPT_MARKER }) });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const logs = server.logs.join('\n');
    t.match(logs, /"path":"\/v1\/completions"/, 'the requests were logged');
    t.notMatch(logs, PROMPT_MARKER, 'prompt text is not logged');
    t.notMatch(logs, API_KEY, 'the API key is not logged');
    t.notMatch(logs, ADMIN_KEY, 'the admin key is not logged');
  });
});

t.test('without --cors-origin there are no CORS headers and OPTIONS is not a route', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const r = await fetch(`${server.url}/v1/models`, { headers: { origin: ORIGIN } });
  t.equal(r.status, 200, 'no key configured: open (loopback only)');
  t.equal(r.headers.get('access-control-allow-origin'), null);
  const preflight = await fetch(`${server.url}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: ORIGIN } });
  t.equal(preflight.status, 405);
  t.equal(preflight.headers.get('access-control-allow-origin'), null);
});
