/**
 * Files the package ships, found from its root: the same whether this code runs from src/
 * through tsx or bundled into dist/ (see src/cli/bundle.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function packageRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

const ROOT = packageRoot(dirname(fileURLToPath(import.meta.url)));

export function packagePath(...parts: string[]): string {
  return join(ROOT, ...parts);
}

/** The server and its worker threads bundled into plain JS (src/cli/bundle.ts builds them). */
export const SERVER_BUNDLE = packagePath('dist', 'server.js');
export const WORKER_BUNDLE = packagePath('dist', 'mlx-worker.js');
export const PROMPT_TOKENIZER_BUNDLE = packagePath('dist', 'prompt-tokenizer.js');
/** The persistent llama.cpp CPU thread pool (native/ggml-threadpool.c), built beside the bundle. */
export const THREAD_POOL_ADDON = packagePath('dist', 'ggml-threadpool.node');

export const PACKAGE_VERSION = (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
