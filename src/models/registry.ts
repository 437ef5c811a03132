/**
 * Where model names come from: the operator's --model, the subfolders of each --models-dir,
 * the Hugging Face cache, and the built-in tiny model. A client only ever names a model; the
 * registry turns the name into a folder it found itself, so no request reaches another path.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, extname, join, resolve, sep } from 'node:path';
import type { ModelSource } from '../engine/protocol.ts';
import { ServeError } from '../errors.ts';
import { describeGguf } from '../gguf/describe.ts';
import { isGgufPath, quantizationOfFileName } from '../gguf/format.ts';

export const BUILTIN_MODEL = 'tiny-qwen3';

export interface ModelEntry extends ModelSource {
  origin: 'builtin' | 'flag' | 'models-dir' | 'hf-cache';
  readonly modifiedAt: Date;
  readonly sizeBytes: number;
  /** Set on a model that is not on disk yet (--auto-pull): downloads it and returns its entry. */
  fetch?: () => Promise<ModelEntry>;
}

/**
 * A model name as the registry and the Hub know it: without an hf.co prefix (Ollama's
 * `hf.co/ORG/NAME:Q4_K_M`) or Ollama's `:latest` tag, and with a quantization tag upper-cased.
 */
export function canonicalModelName(model: string): string {
  const name = model
    .trim()
    .replace(/^https?:\/\//, '')
    .replace(/^(hf\.co|huggingface\.co)\//, '')
    .replace(/:latest$/, '');
  const tag = name.lastIndexOf(':');
  return tag > name.indexOf('/') && name.includes('/') ? `${name.slice(0, tag)}:${name.slice(tag + 1).toUpperCase()}` : name;
}

export function huggingFaceHubCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, 'hub');
  return join(homedir(), '.cache', 'huggingface', 'hub');
}

const isModelDir = (dir: string): boolean => existsSync(join(dir, 'config.json'));
/** A single-file GGUF model (llama.cpp's format); it is named by its file name without `.gguf`. */
const isGgufFile = (path: string): boolean => isGgufPath(path) && existsSync(path) && statSync(path).isFile();
const isModel = (path: string): boolean => isModelDir(path) || isGgufFile(path);
const modelName = (path: string): string => (isGgufPath(path) ? basename(path, extname(path)) : basename(path));

/** A models dir serves what it holds: a symlink in it that leads elsewhere is not followed. */
const insideRoot = (root: string, path: string): boolean => realpathSync(path).startsWith(root + sep);

/**
 * A model found on disk. Its size and date need a stat of every file, which only listings show:
 * they are read on first use, so resolving a request's model name stats no weight files.
 */
class FoundModel implements ModelEntry {
  private stats: { modifiedAt: Date; sizeBytes: number } | null = null;

  constructor(
    readonly name: string,
    readonly path: string,
    readonly origin: ModelEntry['origin'],
  ) {}

  get builtin(): boolean {
    return this.origin === 'builtin';
  }

  get modifiedAt(): Date {
    this.stats ??= folderStats(this.path);
    return this.stats.modifiedAt;
  }

  get sizeBytes(): number {
    this.stats ??= folderStats(this.path);
    return this.stats.sizeBytes;
  }
}

function folderStats(dir: string): { modifiedAt: Date; sizeBytes: number } {
  if (isGgufFile(dir)) {
    const stats = statSync(dir);
    return { modifiedAt: stats.mtime, sizeBytes: stats.size };
  }
  let sizeBytes = 0;
  let modifiedAt = new Date(0);
  for (const file of existsSync(dir) ? readdirSync(dir) : []) {
    const stats = statSync(join(dir, file));
    if (!stats.isFile()) continue;
    sizeBytes += stats.size;
    if (stats.mtime > modifiedAt) modifiedAt = stats.mtime;
  }
  return { modifiedAt, sizeBytes };
}

export function huggingFaceModels(cache: string): { name: string; path: string }[] {
  if (!existsSync(cache)) return [];
  const found: { name: string; path: string }[] = [];
  for (const entry of readdirSync(cache)) {
    if (!entry.startsWith('models--')) continue;
    const repo = join(cache, entry);
    const ref = join(repo, 'refs', 'main');
    const snapshots = join(repo, 'snapshots');
    const revision = existsSync(ref) ? readFileSync(ref, 'utf8').trim() : existsSync(snapshots) ? readdirSync(snapshots)[0] : undefined;
    if (!revision) continue;
    const path = join(snapshots, revision);
    const repoId = entry.slice('models--'.length).replace('--', '/');
    if (isModelDir(path)) found.push({ name: repoId, path });
    // Each GGUF file of a repository that holds several is a model named by its quantization.
    for (const file of existsSync(path) ? readdirSync(path) : []) {
      const ggufPath = join(path, file);
      if (isGgufFile(ggufPath)) found.push({ name: `${repoId}:${quantizationOfFileName(file) ?? describeGguf(ggufPath).quantization}`, path: ggufPath });
    }
  }
  return found;
}

export interface RegistryOptions {
  model: string | null;
  modelsDirs: string[];
  cacheDir: string;
  hubCache?: string;
  /** How to fetch a named model that is not on disk, or null when it cannot be fetched. */
  fetchMissing?: (name: string) => (() => Promise<void>) | null;
}

export class ModelRegistry {
  constructor(private readonly options: RegistryOptions) {}

  get builtinPath(): string {
    return join(this.options.cacheDir, BUILTIN_MODEL);
  }

  /** Every model that can be named right now; the folders are re-read each time, so new ones appear. */
  list(): ModelEntry[] {
    const entries = new Map<string, ModelEntry>();
    const add = (name: string, path: string, origin: ModelEntry['origin']): void => {
      if (!entries.has(name)) entries.set(name, new FoundModel(name, path, origin));
    };
    const flagged = this.options.model;
    if (flagged && flagged !== BUILTIN_MODEL && isModel(resolve(flagged))) add(modelName(resolve(flagged)), resolve(flagged), 'flag');
    for (const dir of this.options.modelsDirs) {
      if (!existsSync(dir)) continue;
      const root = realpathSync(dir);
      for (const sub of readdirSync(dir)) {
        const path = resolve(dir, sub);
        if (isModel(path) && insideRoot(root, path)) add(modelName(path), path, 'models-dir');
      }
    }
    for (const { name, path } of huggingFaceModels(this.options.hubCache ?? huggingFaceHubCache())) add(name, path, 'hf-cache');
    add(BUILTIN_MODEL, this.builtinPath, 'builtin');
    return [...entries.values()];
  }

  /** The model served when a request names none: --model, else the built-in one. */
  get defaultName(): string {
    const flagged = this.options.model;
    if (!flagged) return BUILTIN_MODEL;
    return isModel(resolve(flagged)) ? modelName(resolve(flagged)) : flagged;
  }

  resolve(name: string | undefined | null): ModelEntry {
    const wanted = name && name.length > 0 ? name : this.defaultName;
    const models = this.list();
    const found = models.find((m) => m.name === wanted) ?? models.find((m) => m.name === canonicalModelName(wanted));
    if (!found) {
      const fetchModel = this.options.fetchMissing?.(wanted);
      if (fetchModel) {
        const fetch = async (): Promise<ModelEntry> => {
          await fetchModel();
          return this.resolve(wanted);
        };
        return { name: wanted, path: '', builtin: false, origin: 'hf-cache', modifiedAt: new Date(), sizeBytes: 0, fetch };
      }
      throw new ServeError(404, 'model_not_found', `model '${wanted}' not found; available: ${models.map((m) => m.name).join(', ')}`, 'model');
    }
    return found;
  }
}
