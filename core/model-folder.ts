/**
 * A model folder as both threads read it: its JSON files and the safetensors files that hold its
 * weights. The main thread reads them to list and size a model, the worker to load it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServeError } from './errors.ts';

export function readJson<T>(path: string, what: string): T {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (error) {
    throw new ServeError('model_load_failed', `cannot read ${what} (${path}): ${(error as Error).message}`);
  }
}

/** A JSON file a model folder may leave out (generation_config.json, tokenizer_config.json): {} when absent. */
export function readOptionalJson<T extends object>(path: string, what: string): Partial<T> {
  return existsSync(path) ? readJson<T>(path, what) : {};
}

/** The safetensors files of a model folder: the shards its index names, else model.safetensors. */
export function weightFiles(dir: string): string[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) return [join(dir, 'model.safetensors')];
  const { weight_map: map } = readJson<{ weight_map: Record<string, string> }>(index, 'the safetensors index');
  return [...new Set(Object.values(map))].map((file) => join(dir, file));
}
