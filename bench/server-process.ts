/** Starts `mlx-server serve` on a free port for the bench, the way an operator would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
const START_TIMEOUT_MS = 60_000;

export interface BenchServer {
  url: string;
  /** The supervisor `serve` starts. */
  process: ChildProcess;
  /** The server process the supervisor runs (its memory is the server's). */
  serverPid: number;
  stop(): Promise<void>;
}

/** `bin`: another checkout's bin/mlx-server.js, to measure it against this one. */
export async function startBenchServer(args: string[], bin = BIN): Promise<BenchServer> {
  const child = spawn(process.execPath, [bin, 'serve', '--port', '0', '--idle-timeout', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const recent: string[] = [];
  const keep = (line: string): void => {
    recent.push(line);
    if (recent.length > 40) recent.shift();
  };
  const listening = await new Promise<{ port: number; pid: number }>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error(`the server did not start in ${START_TIMEOUT_MS / 1000}s:\n${recent.join('\n')}`)), START_TIMEOUT_MS);
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        keep(line);
        if (line.includes('"event":"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as { port: number; pid: number });
        }
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => keep(chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code}:\n${recent.join('\n')}`));
    });
  });
  return {
    url: `http://127.0.0.1:${listening.port}`,
    process: child,
    serverPid: listening.pid,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
