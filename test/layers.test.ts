/**
 * The house's one-way arrows, checked on every source file's imports: core/ (what both threads
 * share) imports neither side; the main thread (src/) and the worker (workers/) import the core
 * and their own side only.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';

const ROOT = resolve(import.meta.dirname, '..');
const ROOMS = ['core', 'src', 'workers'] as const;
type Room = (typeof ROOMS)[number];
const ALLOWED: Record<Room, readonly Room[]> = { core: ['core'], src: ['core', 'src'], workers: ['core', 'workers'] };

/** Static imports and re-exports (`from '…'`), side-effect imports and dynamic `import('…')`. */
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

const roomOf = (path: string): string => relative(ROOT, path).split('/')[0] ?? '';

/** Each import that leaves the rooms its file may use, as "file -> imported file". */
function crossings(): string[] {
  return ROOMS.flatMap((room) =>
    sourceFiles(join(ROOT, room)).flatMap((file) =>
      [...readFileSync(file, 'utf8').matchAll(IMPORT)]
        .map((match) => resolve(dirname(file), match[1] ?? ''))
        .filter((target) => !(ALLOWED[room] as readonly string[]).includes(roomOf(target)))
        .map((target) => `${relative(ROOT, file)} -> ${relative(ROOT, target)}`),
    ),
  );
}

t.test('core/, src/ and workers/ import only what their room allows', async (t) => {
  t.same(crossings(), []);
});

t.test('the scan sees every form of import', async (t) => {
  const found = (source: string): string[] => [...source.matchAll(IMPORT)].map((match) => match[1] ?? '');
  t.same(found(`import { a } from '../src/x.ts';`), ['../src/x.ts']);
  t.same(found(`import type { A } from "../../src/y.ts";`), ['../../src/y.ts']);
  t.same(found(`export { b } from './z.ts';`), ['./z.ts']);
  t.same(found(`import './side-effect.ts';`), ['./side-effect.ts']);
  t.same(found(`const m = await import('../workers/w.ts');`), ['../workers/w.ts']);
  t.same(found(`import { mx } from '@frost-beta/mlx';`), [], 'packages are not rooms');
});
