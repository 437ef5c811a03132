/**
 * Where the server listens: the main port (client APIs and probes) beside the admin port (every
 * route), single-port mode, the settings that choose them, a busy port, a URL given as the bind
 * address, and the line a person sees at a terminal.
 */
import { spawn } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { parseServerConfig } from '../src/config.ts';
import { json, post, serverStatus, startServer, TEST_CACHE_DIR } from './helpers/server.ts';

const BIN = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));

/**
 * Runs `mlx-server serve ...args`, which should refuse to start, to its exit; a server that
 * starts listening instead is stopped and reported with the code 'listening'.
 */
function serveUntilExit(args: string[]): Promise<{ code: number | null | 'listening'; stderr: string }> {
  const child = spawn(process.execPath, [BIN, 'serve', '--cache-dir', TEST_CACHE_DIR, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let listening = false;
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout.on('data', (chunk: Buffer) => {
    if (!listening && chunk.toString().includes('"event":"listening"')) {
      listening = true;
      child.kill('SIGTERM');
    }
  });
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code: listening ? 'listening' : code, stderr })));
}

/** A port free right now, found by binding port 0 and letting it go. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

t.test('which ports: defaults, an explicit --port, the env twins and the other server\'s names', async (t) => {
  const ports = (argv: string[], env: NodeJS.ProcessEnv = {}): [number, number | null] => {
    const config = parseServerConfig(argv, env);
    return [config.port, config.mainPort];
  };
  t.same(ports([]), [11437, 11436], 'by default: admin on 11437, main API on 11436');
  t.same(ports(['--port', '9000']), [9000, null], 'an explicit --port alone keeps the single port it always meant');
  t.same(ports([], { MLX_SERVER_PORT: '9000' }), [9000, null], 'so does its env twin (one systemd instance per port)');
  t.same(ports(['--port', '9000', '--main-port', '9001']), [9000, 9001]);
  t.same(ports([], { MLX_SERVER_MAIN_PORT: '9001' }), [11437, 9001]);
  t.same(ports(['--main-port', 'none']), [11437, null], "'none' is single-port mode");
  t.same(ports([], { MLX_ADMIN_PORT: '11441', MLX_MAIN_PORT: '11440' }), [11441, 11440], "the Python MLX server's variable names are read too");
  t.same(ports([], { MLX_SERVER_PORT: '9000', MLX_ADMIN_PORT: '11441' }), [9000, null], 'our own twin wins over the other name');
  t.same(ports([], { MLX_SERVER_MAIN_PORT: '' }), [11437, 11436], 'an empty variable is unset');
  t.throws(() => parseServerConfig(['--port', '9000', '--main-port', '9000'], {}), /--main-port and --port are both 9000/, 'the same port twice is refused');
});

t.test('the main port serves the client APIs and probes; the admin port serves everything', async (t) => {
  const server = await startServer(['--idle-timeout', '0']);
  t.teardown(() => server.stop());
  const listening = JSON.parse(server.logs.find((line) => line.includes('"event":"listening"')) as string) as { port: number; mainPort: number };
  t.ok(listening.port > 0 && listening.mainPort > 0 && listening.port !== listening.mainPort, `the listening line reports both ephemeral ports: ${listening.port}, ${listening.mainPort}`);
  for (const path of ['/health', '/ready', '/v1/models', '/api/tags', '/api/version']) {
    t.equal((await json(`${server.mainUrl}${path}`)).status, 200, `main port: ${path}`);
    t.equal((await json(`${server.url}${path}`)).status, 200, `admin port: ${path}`);
  }
  for (const path of ['/admin/status', '/admin/health', '/metrics', '/dashboard']) {
    t.equal((await fetch(`${server.mainUrl}${path}`)).status, 404, `main port does not serve ${path}`);
    t.equal((await fetch(`${server.url}${path}`)).status, 200, `admin port: ${path}`);
  }
  t.equal((await post(`${server.mainUrl}/admin/unload`, {})).status, 404, 'no admin mutation on the main port');
  const status = await serverStatus(server.url);
  t.same(status.ports, { admin: server.port, main: server.mainPort }, 'status reports both ports');
});

t.test('single-port mode: --main-port none', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--main-port', 'none']);
  t.teardown(() => server.stop());
  const listening = JSON.parse(server.logs.find((line) => line.includes('"event":"listening"')) as string) as { mainPort: number | null };
  t.equal(listening.mainPort, null);
  t.equal((await json(`${server.url}/v1/models`)).status, 200);
  t.equal((await json(`${server.url}/admin/status`)).status, 200);
});

t.test('a second server on a busy port exits with one clear line instead of sharing the port', async (t) => {
  // Fixed ports, as in real use: Linux never lets a second socket join one bound to port 0, so only a fixed port shows sharing.
  const [adminPort, mainPort] = await Promise.all([freePort(), freePort()]);
  const first = await startServer(['--idle-timeout', '0', '--port', String(adminPort), '--main-port', String(mainPort)]);
  t.teardown(() => first.stop());
  const [adminBusy, mainBusy] = await Promise.all([
    serveUntilExit(['--port', String(first.port), '--main-port', '0']),
    serveUntilExit(['--port', '0', '--main-port', String(first.mainPort)]),
  ]);
  t.equal(adminBusy.code, 2, 'exits with code 2, as for any start-up error, instead of listening');
  t.match(adminBusy.stderr, new RegExp(`^mlx-server: port ${first.port} is in use$`, 'm'), 'names the busy admin port');
  t.equal(mainBusy.code, 2);
  t.match(mainBusy.stderr, new RegExp(`^mlx-server: port ${first.mainPort} is in use$`, 'm'), 'names the busy main port');
  t.equal(first.process.exitCode, null, 'the first server is still running');
  t.equal((await json(`${first.url}/health`)).status, 200, 'and answering');
});

t.test('a URL as the bind address: serve reads its host and says so', async (t) => {
  const config = parseServerConfig([], { MLX_SERVER_HOST: 'http://127.0.0.1:11437' });
  t.equal(config.host, '127.0.0.1');
  t.match(config.hostNotice, "MLX_SERVER_HOST 'http://127.0.0.1:11437' is a URL; binding its host 127.0.0.1");
  t.equal(parseServerConfig([], { MLX_SERVER_HOST: 'http://[::1]:11437' }).host, '::1');
  t.equal(parseServerConfig(['--host', '127.0.0.1'], {}).hostNotice, null, 'a plain address needs no notice');
  t.throws(() => parseServerConfig([], { MLX_SERVER_HOST: 'http://0.0.0.0:11437' }), /refusing to bind 0\.0\.0\.0 \(.*'http:\/\/0\.0\.0\.0:11437' is a URL; binding its host 0\.0\.0\.0.*\) without --api-key/, 'the refusal names the address understood and where it came from');

  const server = await startServer(['--idle-timeout', '0'], { MLX_SERVER_HOST: 'http://127.0.0.1:11437' });
  t.teardown(() => server.stop());
  t.equal((await json(`${server.url}/health`)).status, 200, 'it serves');
  t.match(server.logs.join('\n'), /mlx-server: --host \/ MLX_SERVER_HOST 'http:\/\/127\.0\.0\.1:11437' is a URL; binding its host 127\.0\.0\.1/, 'one line says what was understood');
});

t.test('at a terminal, start-up prints one line a person can read; piped, stdout stays JSON', async (t) => {
  const command = [process.execPath, BIN, 'serve', '--port', '0', '--main-port', '0', '--idle-timeout', '0', '--cache-dir', TEST_CACHE_DIR].join(' ');
  // script(1) runs the server on a pseudo-terminal, as a shell in a terminal window would.
  const terminal = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no serving line:\n${output}`)), 60_000);
    terminal.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /^serving on .*$/m.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[0].trim());
      }
    });
  });
  terminal.kill('SIGTERM');
  await new Promise((resolve) => terminal.on('exit', resolve));
  t.match(line, /^serving on http:\/\/127\.0\.0\.1:\d+ \(admin on :\d+\) — model tiny-qwen3 loads on first request$/);

  const piped = await startServer(['--idle-timeout', '0']);
  t.teardown(() => piped.stop());
  t.notOk(piped.logs.some((entry) => entry.startsWith('serving on')), 'no human line in a piped log');
});

t.test('ready is 503 while a new request would be turned away (queue full), 200 again after', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--max-queue', '1', '--max-batch', '1']);
  t.teardown(() => server.stop());
  const aborts = [new AbortController(), new AbortController()];
  const long = (signal: AbortSignal): Promise<unknown> =>
    fetch(`${server.mainUrl}/v1/completions`, { method: 'POST', signal, body: JSON.stringify({ prompt: 'go', max_tokens: 4000, ignore_eos: true, stream: true }) })
      .then((response) => response.text())
      .catch(() => undefined);
  const health = async (): Promise<{ active_requests: number; queued_requests: number }> => (await json<{ active_requests: number; queued_requests: number }>(`${server.mainUrl}/health`)).body;
  const pending = [long((aborts[0] as AbortController).signal)];
  while ((await health()).active_requests < 1) await new Promise((resolve) => setTimeout(resolve, 100));
  t.equal((await json(`${server.mainUrl}/ready`)).status, 200, 'one running, nobody waiting: ready');
  pending.push(long((aborts[1] as AbortController).signal));
  while ((await health()).queued_requests < 1) await new Promise((resolve) => setTimeout(resolve, 100));
  const full = await json<{ ready: boolean; reason: string }>(`${server.mainUrl}/ready`);
  t.equal(full.status, 503, 'the queue is full: not ready');
  t.same([full.body.ready, full.body.reason], [false, 'queue_full']);
  for (const abort of aborts) abort.abort();
  await Promise.all(pending);
  let again = 0;
  for (let i = 0; i < 100 && again !== 200; i++) {
    again = (await json(`${server.mainUrl}/ready`)).status;
    if (again !== 200) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.equal(again, 200, 'ready again once the clients are gone');
});
