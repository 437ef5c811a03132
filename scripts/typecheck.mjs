#!/usr/bin/env node
// Strict type check of our own code. node-mlx 0.0.7 ships its nn/optimizers sources as .ts files
// that its index.d.ts re-exports, so tsc checks them (skipLibCheck skips only .d.ts) and they fail
// our strict flags; errors inside node_modules are not ours and are left out (in a git worktree whose
// node_modules links to another checkout, tsc names them ../<checkout>/node_modules).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const result = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json', '--noEmit', '--pretty', 'false'], { encoding: 'utf8' });
const ours = result.stdout.split('\n').filter((line) => line.trim() && !/^(\.\.\/[^/]+\/)?node_modules\//.test(line) && !line.startsWith(' '));
if (ours.length > 0) {
  console.error(ours.join('\n'));
  process.exit(1);
}
if (result.status !== 0 && !result.stdout.includes('node_modules/')) {
  console.error(result.stdout, result.stderr);
  process.exit(result.status ?? 1);
}
console.log('typecheck: ok');
