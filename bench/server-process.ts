/**
 * Starts the servers the bench measures: `mlx-server serve` on a free port, the way an operator
 * would, and for the llama.cpp comparison llama.cpp's own `llama-server` on a GGUF file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { send } from '../src/client/api-client.ts';

const BIN = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
const START_TIMEOUT_MS = 60_000;
/** llama-server maps the whole file before /health answers 200; a 2 GB F32 file on a busy disk takes a while. */
const PEER_START_TIMEOUT_MS = 180_000;

export interface BenchServer {
  url: string;
  /** The process the bench started (for ours, the supervisor `serve` starts). */
  process: ChildProcess;
  /** The server process itself (its memory is the server's). */
  serverPid: number;
  stop(): Promise<void>;
}

/** The last lines a child wrote, for the error when it does not start. */
function recentOutput(child: ChildProcess): { lines: string[]; onStdout: (handler: (line: string) => void) => void } {
  const lines: string[] = [];
  const handlers: ((line: string) => void)[] = [];
  const keep = (line: string): void => {
    lines.push(line);
    if (lines.length > 40) lines.shift();
    for (const handler of handlers) handler(line);
  };
  let buffered = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const complete = buffered.split('\n');
    buffered = complete.pop() ?? '';
    complete.forEach(keep);
  });
  child.stderr?.on('data', (chunk: Buffer) => chunk.toString().split('\n').filter(Boolean).forEach((line) => keep(line)));
  return { lines, onStdout: (handler) => handlers.push(handler) };
}

function benchServer(child: ChildProcess, url: string, serverPid: number): BenchServer {
  return {
    url,
    process: child,
    serverPid,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** Rejects when the child exits or the deadline passes, whichever comes first, with its last output. */
function startupGuard(child: ChildProcess, lines: string[], timeoutMs: number, what: string): { failed: Promise<never>; clear: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let onExit: ((code: number | null) => void) | undefined;
  let onError: ((error: Error) => void) | undefined;
  const failed = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not start in ${timeoutMs / 1000}s:\n${lines.join('\n')}`)), timeoutMs);
    onExit = (code) => reject(new Error(`${what} exited with ${code}:\n${lines.join('\n')}`));
    onError = (error) => reject(new Error(`${what} could not start: ${error.message}`));
    child.once('exit', onExit);
    child.once('error', onError);
  });
  return {
    failed,
    clear: () => {
      clearTimeout(timer);
      if (onExit) child.off('exit', onExit);
      if (onError) child.off('error', onError);
    },
  };
}

/** `bin`: another checkout's bin/mlx-server.js, to measure it against this one. */
export async function startBenchServer(args: string[], bin = BIN): Promise<BenchServer> {
  const child = spawn(process.execPath, [bin, 'serve', '--port', '0', '--idle-timeout', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output = recentOutput(child);
  const guard = startupGuard(child, output.lines, START_TIMEOUT_MS, 'the server');
  const listening = new Promise<{ port: number; pid: number }>((resolve) =>
    output.onStdout((line) => {
      if (line.includes('"event":"listening"')) resolve(JSON.parse(line) as { port: number; pid: number });
    }),
  );
  try {
    const { port, pid } = await Promise.race([listening, guard.failed]);
    return benchServer(child, `http://127.0.0.1:${port}`, pid);
  } finally {
    guard.clear();
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no free port'))));
    });
  });
}

export interface PeerSettings {
  /** KV cells per sequence: what our server's llama.cpp context gives each request. */
  contextPerSequence: number;
  /** Sequences decoded together: our server's --max-batch. */
  parallel: number;
}

/**
 * llama.cpp's `llama-server` on `ggufPath`, set up as our server sets up llama.cpp: the same
 * sequence count and context per sequence, continuous batching, one thread per core.
 */
export async function startLlamaServer(binary: string, ggufPath: string, settings: PeerSettings, env: Record<string, string> = {}): Promise<BenchServer> {
  const port = await freePort();
  const args = ['-m', ggufPath, '--host', '127.0.0.1', '--port', String(port), '--parallel', String(settings.parallel), '-c', String(settings.contextPerSequence * settings.parallel), '-t', String(availableParallelism()), '--cont-batching', '--no-webui'];
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const output = recentOutput(child);
  const guard = startupGuard(child, output.lines, PEER_START_TIMEOUT_MS, `llama-server (${args.join(' ')})`);
  const url = `http://127.0.0.1:${port}`;
  let waiting = true;
  const healthy = (async (): Promise<void> => {
    while (waiting) {
      const reply = await send(`${url}/health`, 'GET').catch(() => null);
      if (reply?.status === 200) return;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  try {
    await Promise.race([healthy, guard.failed]);
  } catch (error) {
    child.kill('SIGTERM');
    throw error;
  } finally {
    waiting = false;
    guard.clear();
  }
  return benchServer(child, url, child.pid as number);
}
