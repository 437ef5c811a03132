/**
 * Builds native/ggml-threadpool.c, the persistent thread pool for llama.cpp's CPU decodes (see
 * that file for why), into dist/ beside the server bundle, with the machine's C compiler and
 * Node's own headers. Linux only: it relies on ELF symbol lookup. Without it the GGUF engine
 * still serves, starting its threads for each multi-threaded decode as node-llama-cpp does.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { packagePath, THREAD_POOL_ADDON } from '../paths.ts';

const SOURCE = packagePath('native', 'ggml-threadpool.c');

/** Builds the addon unless it is newer than its source; null when it is built, else why not. */
export function buildThreadPoolAddon(): string | null {
  if (process.platform !== 'linux') return `not built on ${process.platform} (it needs ELF symbol lookup)`;
  if (existsSync(THREAD_POOL_ADDON) && statSync(THREAD_POOL_ADDON).mtimeMs >= statSync(SOURCE).mtimeMs) return null;
  const headers = join(dirname(process.execPath), '..', 'include', 'node');
  if (!existsSync(join(headers, 'node_api.h'))) return `Node's headers are not in ${headers}`;
  const compiler = process.env.CC ?? 'cc';
  // Servers started side by side build side by side: the addon appears whole or not at all.
  const staging = `${THREAD_POOL_ADDON}.${process.pid}`;
  mkdirSync(dirname(THREAD_POOL_ADDON), { recursive: true });
  try {
    execFileSync(compiler, ['-O2', '-shared', '-fPIC', '-I', headers, '-o', staging, SOURCE, '-ldl', '-lpthread'], { stdio: ['ignore', 'ignore', 'pipe'] });
    renameSync(staging, THREAD_POOL_ADDON);
    return null;
  } catch (error) {
    rmSync(staging, { force: true });
    const { code, stderr } = error as NodeJS.ErrnoException & { stderr?: Buffer };
    return code === 'ENOENT' ? `no C compiler (${compiler}) is installed` : `${compiler} failed: ${stderr?.toString().split('\n')[0] ?? (error as Error).message}`;
  }
}
