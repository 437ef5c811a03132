/**
 * The server process runs from a bundle of plain JS in dist/, built with esbuild by the
 * supervisor each time it starts (a fraction of a second; unchanged files are not rewritten).
 * Run through tsx instead, Node 20 keeps a module-loader thread for the life of the process:
 * the server idled ~30 MB larger, and start-up left ~40 MB more that V8 gave back only over
 * the next ~25 s, so memory measured early (a soak's baseline) was inflated.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { packagePath } from '../paths.ts';

function writeIfChanged(path: string, contents: Uint8Array): void {
  if (existsSync(path) && Buffer.compare(readFileSync(path), contents) === 0) return;
  mkdirSync(dirname(path), { recursive: true });
  // Servers started side by side build side by side: each file appears whole or not at all.
  const staging = `${path}.${process.pid}`;
  writeFileSync(staging, contents);
  renameSync(staging, path);
}

/** Builds dist/; null when it is built, else why not (the caller falls back to tsx). */
export async function buildServerBundle(): Promise<string | null> {
  try {
    // Imported here, not at the top: the bundled server itself must not load esbuild.
    const { build } = await import('esbuild');
    const result = await build({
      entryPoints: {
        server: packagePath('src', 'cli', 'server-entry.ts'),
        'mlx-worker': packagePath('workers', 'mlx-worker.ts'),
        'prompt-tokenizer': packagePath('workers', 'prompt-tokenizer.ts'),
      },
      outdir: packagePath('dist'),
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      packages: 'external',
      sourcemap: 'linked',
      write: false,
      logLevel: 'silent',
    });
    for (const file of result.outputFiles) writeIfChanged(file.path, file.contents);
    return null;
  } catch (error) {
    return (error as Error).message.split('\n')[0] ?? 'unknown error';
  }
}
