/**
 * `mlx-server doctor`: one command that shows whether memory comes back on this machine. It
 * prints the platform and what MLX sees of the device, then starts a real server the way `serve`
 * does (supervisor and its environment included) on a free loopback port, loads a model, unloads
 * it, and prints memory before the load, after it and after the unload, with the recovery. On a
 * Mac its output is the evidence the Metal path works there; it runs the same on Linux.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus, release, totalmem } from 'node:os';
import { createRequire } from 'node:module';
import { packagePath } from '../paths.ts';
import { checkNativeRuntime } from './native.ts';

const USAGE = `usage: mlx-server doctor [--min-recovery PCT] [serve flags, e.g. --model NAME]

Prints the platform and MLX's device, starts a server on a free loopback port, loads the model
(the default one unless --model says otherwise), unloads it, and prints memory before the load,
after it and after the unload. Exits 0 when at least PCT percent (default 95) of what the load
took came back, 1 when less did, 2 when the check could not run.
`;

const GB = 1024 ** 3;
const SETTLE_STEP_MS = 500;
const SETTLE_MAX_MS = 10_000;
const START_TIMEOUT_MS = 120_000;

interface MemoryFigures {
  rss_gb: number;
  active_memory_gb: number;
  cache_memory_gb?: number;
  device?: string;
}

class DoctorError extends Error {}

const say = (line = ''): void => void process.stdout.write(`${line}\n`);
const fixed = (value: number, digits = 4): string => value.toFixed(digits);

function printPlatform(): boolean {
  const require = createRequire(import.meta.url);
  const version = (require('@frost-beta/mlx/package.json') as { version: string }).version;
  say('platform');
  say(`  os            ${process.platform} ${release()} (${process.arch})`);
  say(`  cpu           ${cpus()[0]?.model ?? 'unknown'} x${cpus().length}`);
  say(`  memory        ${fixed(totalmem() / GB, 1)} GB`);
  say(`  node          ${process.version}`);
  say(`  node-mlx      ${version}`);
  const mx = (require('@frost-beta/mlx') as typeof import('@frost-beta/mlx')).core;
  const gpu = mx.metal.isAvailable();
  say('mlx device');
  say(`  default       ${String(mx.defaultDevice())}`);
  say(`  metal         ${gpu ? 'available' : 'not available (CPU build: MLX counts no memory; the process resident set is measured)'}`);
  if (gpu) {
    for (const [key, value] of Object.entries(mx.metal.deviceInfo())) {
      say(`  ${key.padEnd(34)} ${typeof value === 'number' && value >= GB ? `${fixed(value / GB, 2)} GB` : String(value)}`);
    }
  }
  return gpu;
}

/** Starts `mlx-server serve` on a free loopback port, unauthenticated (it is ours alone), and resolves with its URL. */
function startServer(serveArgs: string[]): Promise<{ child: ChildProcess; url: string }> {
  const bin = packagePath('bin', 'mlx-server.js');
  const args = [bin, 'serve', '--idle-timeout', '0', ...serveArgs, '--host', '127.0.0.1', '--port', '0', '--log-level', 'info'];
  const child = spawn(process.execPath, args, { env: { ...process.env, MLX_SERVER_API_KEY: '', MLX_SERVER_ADMIN_KEY: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new DoctorError(`the server did not start within ${START_TIMEOUT_MS / 1000}s:\n${output.join('')}`)), START_TIMEOUT_MS);
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        output.push(`${line}\n`);
        if (!line.includes('"event":"listening"')) continue;
        clearTimeout(timer);
        resolve({ child, url: `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}` });
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new DoctorError(`the server exited (code ${code}) before it listened:\n${output.join('')}`));
    });
  });
}

async function call(url: string, path: string, body?: Record<string, unknown>): Promise<Record<string, unknown>> {
  const response = await fetch(url + path, body ? { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {});
  const parsed = (await response.json()) as Record<string, unknown>;
  if (!response.ok) throw new DoctorError(`${body ? 'POST' : 'GET'} ${path} answered HTTP ${response.status}: ${JSON.stringify(parsed)}`);
  return parsed;
}

const memory = async (url: string): Promise<MemoryFigures> => (await call(url, '/admin/status')).memory as MemoryFigures;

/** Memory once it stops moving: V8 and the allocators give some back only after a moment. */
async function settledMemory(url: string): Promise<MemoryFigures> {
  let last = await memory(url);
  for (const started = performance.now(); performance.now() - started < SETTLE_MAX_MS; ) {
    await new Promise((resolve) => setTimeout(resolve, SETTLE_STEP_MS));
    const now = await memory(url);
    if (Math.abs(now.rss_gb - last.rss_gb) < 0.002 && now.active_memory_gb === last.active_memory_gb) return now;
    last = now;
  }
  return last;
}

/** Percent of what the load added that the unload gave back; null when the load added nothing measurable. */
function recovery(before: number, loaded: number, after: number): number | null {
  return loaded - before > 0 ? ((loaded - after) / (loaded - before)) * 100 : null;
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

function splitArgs(args: string[]): { minRecovery: number; serveArgs: string[] } {
  const at = args.indexOf('--min-recovery');
  if (at < 0) return { minRecovery: 95, serveArgs: args };
  const minRecovery = Number(args[at + 1]);
  if (!Number.isFinite(minRecovery) || minRecovery < 0 || minRecovery > 100) throw new DoctorError(`--min-recovery must be a percentage, got '${args[at + 1]}'`);
  return { minRecovery, serveArgs: [...args.slice(0, at), ...args.slice(at + 2)] };
}

async function runDoctor(args: string[]): Promise<number> {
  const { minRecovery, serveArgs } = splitArgs(args);
  const problem = checkNativeRuntime();
  if (problem) throw new DoctorError(problem);
  const gpu = printPlatform();
  const { child, url } = await startServer(serveArgs);
  try {
    const before = await settledMemory(url);
    const load = await call(url, '/admin/load', {});
    const loaded = await settledMemory(url);
    const unload = await call(url, '/admin/unload', {});
    const after = await settledMemory(url);
    say('model');
    say(`  name          ${String(load.model)} (${String(load.model_type)}, ${fixed(Number(load.model_memory_gb))} GB of weights, loaded in ${String(load.load_seconds)}s)`);
    say(`  server device ${loaded.device ?? 'cpu'}`);
    say('memory (GB)              before load   after load   after unload');
    const row = (label: string, pick: (m: MemoryFigures) => number): void =>
      say(`  ${label.padEnd(22)} ${fixed(pick(before)).padStart(11)} ${fixed(pick(loaded)).padStart(12)} ${fixed(pick(after)).padStart(14)}`);
    row('process resident', (m) => m.rss_gb);
    row('active_memory_gb', (m) => m.active_memory_gb);
    row('cache_memory_gb', (m) => m.cache_memory_gb ?? 0);
    say(`  active_memory_gb is ${gpu ? "MLX's active memory on the GPU" : 'the resident set above the pre-load baseline (the CPU build counts nothing)'}`);
    say(`  freed, as the unload reported: ${fixed(Number(unload.memory_freed_gb))} GB`);
    const recoveries: [string, number | null][] = [['process resident', recovery(before.rss_gb, loaded.rss_gb, after.rss_gb)]];
    const held = (m: MemoryFigures): number => m.active_memory_gb + (m.cache_memory_gb ?? 0);
    if (gpu) recoveries.push(['MLX active + cache', recovery(held(before), held(loaded), held(after))]);
    say('recovery');
    for (const [label, percent] of recoveries) say(`  ${label.padEnd(22)} ${percent === null ? 'n/a (the load added nothing measurable)' : `${percent.toFixed(2)}%`}`);
    const measured = recoveries.map(([, percent]) => percent).filter((percent): percent is number => percent !== null);
    if (measured.length === 0) throw new DoctorError('the load added no measurable memory, so no recovery can be computed');
    const pass = measured.every((percent) => percent >= minRecovery);
    say(`verdict: ${pass ? 'PASS' : 'FAIL'} (recovery ${pass ? '>=' : '<'} ${minRecovery}%)`);
    return pass ? 0 : 1;
  } finally {
    await stop(child);
  }
}

export async function doctorCommand(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  try {
    process.exitCode = await runDoctor(args);
  } catch (error) {
    if (!(error instanceof DoctorError) && !(error instanceof TypeError)) throw error;
    process.stderr.write(`mlx-server doctor: ${error.message}\n`);
    process.exitCode = 2;
  }
}
