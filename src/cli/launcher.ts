/**
 * `mlx-server serve` runs the server as a child process under a small supervisor. The child
 * gets what glibc only reads at process start (a low mmap threshold, so freed model weights
 * go back to the OS on every unload, not just the first) and is restarted if it dies
 * abnormally: a native abort inside MLX takes the whole process down.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { packagePath, SERVER_BUNDLE } from '../paths.ts';
import { buildServerBundle } from './bundle.ts';
import { checkNativeRuntime } from './native.ts';
import { buildThreadPoolAddon } from './thread-pool-addon.ts';

/** Set in the server child's environment to the supervisor's pid. */
export const CHILD_MARKER = 'MLX_SERVER_CHILD';
export const CONFIG_ERROR_EXIT = 2;
const RESTART_DELAY_MS = 500;
/** A child that dies this soon after starting, this many times in a row, is not going to recover. */
const EARLY_EXIT_MS = 5000;
const EARLY_EXITS_BEFORE_GIVING_UP = 3;

function say(message: string): void {
  process.stderr.write(`mlx-server: ${message}\n`);
}

/** Node's arguments for the server child: the bundle, or the TypeScript sources through tsx when it cannot be built. */
async function childCommand(args: string[]): Promise<string[]> {
  const unbuilt = await buildServerBundle();
  const noThreadPool = buildThreadPoolAddon();
  if (noThreadPool !== null && process.platform === 'linux') say(`llama.cpp's CPU decodes will start their threads each time: ${noThreadPool}`);
  if (unbuilt === null) return ['--expose-gc', '--enable-source-maps', SERVER_BUNDLE, 'serve', ...args];
  say(`cannot build ${SERVER_BUNDLE} (${unbuilt}); running the TypeScript sources through tsx`);
  return ['--import', import.meta.resolve('tsx'), '--expose-gc', packagePath('bin', 'mlx-server.js'), 'serve', ...args];
}

export async function superviseServer(args: string[]): Promise<void> {
  const problem = checkNativeRuntime();
  if (problem) {
    say(problem);
    process.exit(1);
  }
  const command = await childCommand(args);
  let child: ChildProcess | null = null;
  let stopping = false;
  let earlyExits = 0;
  const start = (): void => {
    child = spawn(process.execPath, command, {
      stdio: 'inherit',
      env: { ...process.env, [CHILD_MARKER]: String(process.pid), MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' },
    });
    const startedAt = Date.now();
    child.on('exit', (code, signal) => {
      child = null;
      if (stopping || code === 0 || code === CONFIG_ERROR_EXIT) process.exit(code ?? 0);
      const uptimeMs = Date.now() - startedAt;
      earlyExits = uptimeMs < EARLY_EXIT_MS ? earlyExits + 1 : 0;
      if (earlyExits >= EARLY_EXITS_BEFORE_GIVING_UP) {
        say(`server exited (${signal ?? `code ${code}`}) within ${EARLY_EXIT_MS / 1000}s of starting ${earlyExits} times in a row; giving up`);
        process.exit(code || 1);
      }
      say(`server exited (${signal ?? `code ${code}`}) after ${Math.round(uptimeMs / 1000)}s; restarting in ${RESTART_DELAY_MS} ms`);
      setTimeout(start, RESTART_DELAY_MS);
    });
  };
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      stopping = true;
      if (child) child.kill(signal);
      else process.exit(0);
    });
  }
  start();
}
