/** Starts a real `mlx-server serve` process for a test and stops it afterwards. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/mlx-server.js', import.meta.url));
/** Shared by every test run on this machine, so the built-in model is generated once. */
export const TEST_CACHE_DIR = join(tmpdir(), 'mlx-server-test-cache');

export interface TestServer {
  /** The admin port, which serves every route. */
  url: string;
  port: number;
  /** The main port: the client APIs and probes only. */
  mainUrl: string;
  mainPort: number;
  process: ChildProcess;
  logs: string[];
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Servers still running when the test process exits (a failed or killed test) are stopped with it. */
const liveServers = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of liveServers) child.kill('SIGKILL');
});

/**
 * Both ports ephemeral, so parallel runs never collide. `defaultPorts` starts the server as a
 * user does, on 11437 and 11436: only for tests of that layout itself.
 */
export async function startServer(args: string[] = [], env: NodeJS.ProcessEnv = {}, { defaultPorts = false } = {}): Promise<TestServer> {
  const ports = defaultPorts ? [] : ['--port', '0', '--main-port', '0'];
  const child = spawn(process.execPath, [BIN, 'serve', ...ports, '--cache-dir', TEST_CACHE_DIR, ...args], {
    env: { ...process.env, MLX_SERVER_LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveServers.add(child);
  child.on('exit', () => liveServers.delete(child));
  const logs: string[] = [];
  const { port, mainPort } = await new Promise<{ port: number; mainPort: number }>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${logs.join('\n')}`)), 90_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        logs.push(line);
        if (line.includes('"event":"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as { port: number; mainPort: number });
        }
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${logs.join('\n')}`));
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    mainUrl: `http://127.0.0.1:${mainPort}`,
    mainPort,
    process: child,
    logs,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

export async function json<T = Record<string, unknown>>(url: string, init?: RequestInit): Promise<{ status: number; body: T; headers: Headers }> {
  const response = await fetch(url, init);
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : null) as T, headers: response.headers };
}

export const post = (url: string, body: unknown): Promise<{ status: number; body: Record<string, any>; headers: Headers }> =>
  json(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });

export const tempDir = (prefix: string): string => mkdtempSync(join(tmpdir(), prefix));
