/** Starts a real `mlx-server serve` process for a test and stops it afterwards. */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient, exchangeJson, postJson, type JsonReply, type ServerStatus } from '../../src/client/api-client.ts';
import { convertToGguf, type ConvertOptions } from '../../src/gguf/convert.ts';
import { materializeDefaultModel } from '../../workers/default-model.ts';

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
  /** The launcher's child that serves, as its first `listening` line names it. */
  serverPid: number;
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
  const { port, mainPort, pid } = await new Promise<{ port: number; mainPort: number; pid: number }>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => {
      // Stopped, so that its pipes do not keep the test process alive after the failure.
      child.kill('SIGTERM');
      reject(new Error(`server did not start:\n${logs.join('\n')}`));
    }, 120_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        logs.push(line);
        if (line.includes('"event":"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as { port: number; mainPort: number; pid: number });
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
    serverPid: pid,
    process: child,
    logs,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** The tests reach the server through our one API client, as every client of ours does. */
export const json = exchangeJson;

export const post = (url: string, body: unknown): Promise<JsonReply<Record<string, any>>> => postJson(url, body);

export const serverStatus = (url: string): Promise<ServerStatus> => new ApiClient(url).status();

export const tempDir = (prefix: string): string => mkdtempSync(join(tmpdir(), prefix));

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The server's log lines for one event, parsed. */
export const logEvents = (server: TestServer, event: string): Record<string, unknown>[] =>
  server.logs.filter((line) => line.includes(`"event":"${event}"`)).map((line) => JSON.parse(line) as Record<string, unknown>);

/** Probes until it returns something other than undefined; fails after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A models dir holding one copy of the built-in model under `name`, with `changes` merged into its config.json. */
export function builtinModelVariant(name: string, changes: Record<string, unknown>): { modelsDir: string; path: string } {
  const modelsDir = tempDir(`mlx-${name}-`);
  const path = join(modelsDir, name);
  cpSync(join(TEST_CACHE_DIR, 'tiny-qwen3'), path, { recursive: true });
  const config = JSON.parse(readFileSync(join(path, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(path, 'config.json'), JSON.stringify({ ...config, ...changes }));
  return { modelsDir, path };
}

/** The built-in model's weights written as a GGUF file at `path` (F32 unless `options` say); returns the files written. */
export function builtinModelGguf(path: string, options: ConvertOptions = { type: 'F32' }): string[] {
  materializeDefaultModel(join(TEST_CACHE_DIR, 'tiny-qwen3'));
  return convertToGguf(join(TEST_CACHE_DIR, 'tiny-qwen3'), path, options);
}

/** The worker's forward-pass counters and the tokens generated, from /metrics. */
export async function forwardPassCounters(url: string): Promise<{ passes: number; sequences: number; generated: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { passes: value('mlx:forward_passes_total'), sequences: value('mlx:forward_pass_sequences_total'), generated: value('mlx:generation_tokens_total') };
}
