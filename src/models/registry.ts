/**
 * Where model names come from: the operator's --model, the subfolders of each --models-dir,
 * the Hugging Face cache, and the built-in tiny model. A client only ever names a model; the
 * registry turns the name into a folder it found itself, so no request reaches another path.
 */
import { watch, type FSWatcher } from 'node:fs';
import { access, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, resolve, sep } from 'node:path';
import type { ModelSource } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';
import { describeGguf } from '../../core/gguf/describe.ts';
import { ggufFiles, ggufModelName, isGgufPath, quantizationOfFileName, startsGgufModel } from '../../core/gguf/format.ts';

export const BUILTIN_MODEL = 'tiny-qwen3';

export interface ModelEntry extends ModelSource {
  origin: 'builtin' | 'flag' | 'models-dir' | 'hf-cache';
  modifiedAt: Date;
  sizeBytes: number;
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

/** How old the index may grow before a request that reads it starts a refresh in the background. */
const INDEX_TTL_MS = 5000;
/** Folder events come in bursts (a copy, a download); one refresh follows each burst. */
const WATCH_SETTLE_MS = 100;

const exists = (path: string): Promise<boolean> => access(path).then(() => true, () => false);
const isModelDir = (dir: string): Promise<boolean> => exists(join(dir, 'config.json'));
const isFile = (path: string): Promise<boolean> => stat(path).then((s) => s.isFile(), () => false);
/**
 * A GGUF model (llama.cpp's format): a file of its own, or the first part of a split model whose
 * parts are all there; named by its file name without `.gguf` and a split model's part numbers.
 */
const isGgufFile = async (path: string): Promise<boolean> =>
  startsGgufModel(path) && (await Promise.all(ggufFiles(path).map(isFile))).every(Boolean);
const isModel = async (path: string): Promise<boolean> => (await isModelDir(path)) || (await isGgufFile(path));
const modelName = (path: string): string => (isGgufPath(path) ? ggufModelName(basename(path)) : basename(path));
const listDir = (dir: string): Promise<string[]> => readdir(dir).catch(() => []);

/** A models dir serves what it holds: a symlink in it that leads elsewhere is not followed. */
const insideRoot = async (root: string, path: string): Promise<boolean> => (await realpath(path)).startsWith(root + sep);

/** Size and date of a model's files, read when the index is built so no request stats a weight file. */
async function folderStats(path: string): Promise<{ modifiedAt: Date; sizeBytes: number }> {
  if (await isGgufFile(path)) {
    const parts = await Promise.all(ggufFiles(path).map((file) => stat(file)));
    return { modifiedAt: new Date(Math.max(...parts.map((part) => part.mtimeMs))), sizeBytes: parts.reduce((sum, part) => sum + part.size, 0) };
  }
  let sizeBytes = 0;
  let modifiedAt = new Date(0);
  for (const file of await listDir(path)) {
    const stats = await stat(join(path, file)).catch(() => null);
    if (!stats?.isFile()) continue;
    sizeBytes += stats.size;
    if (stats.mtime > modifiedAt) modifiedAt = stats.mtime;
  }
  return { modifiedAt, sizeBytes };
}

async function foundModel(name: string, path: string, origin: ModelEntry['origin']): Promise<ModelEntry> {
  return { name, path, origin, builtin: origin === 'builtin', ...(await folderStats(path)) };
}

/**
 * The GGUF models in a repository snapshot: its files, and those one folder down, where
 * repositories of many quantizations keep each split model's parts (`Q4_K_M/…-00001-of-00002.gguf`).
 */
export async function ggufModelsIn(snapshot: string): Promise<string[]> {
  const entries = (await listDir(snapshot)).map((entry) => join(snapshot, entry));
  const below = await Promise.all(entries.map(async (entry) => ((await stat(entry).catch(() => null))?.isDirectory() ? (await listDir(entry)).map((file) => join(entry, file)) : [])));
  const candidates = [...entries, ...below.flat()].sort();
  const models = await Promise.all(candidates.map(isGgufFile));
  return candidates.filter((_, i) => models[i]);
}

/** The Hugging Face cache's models: each repository's snapshot at refs/main (else its first), when it holds a config.json. */
export async function huggingFaceModels(cache: string): Promise<{ name: string; path: string }[]> {
  const repos = (await listDir(cache)).filter((entry) => entry.startsWith('models--'));
  const found = await Promise.all(
    repos.map(async (entry) => {
      const repo = join(cache, entry);
      const snapshots = join(repo, 'snapshots');
      const revision = await readFile(join(repo, 'refs', 'main'), 'utf8').then((ref) => ref.trim(), async () => (await listDir(snapshots))[0]);
      if (!revision) return [];
      const path = join(snapshots, revision);
      const repoId = entry.slice('models--'.length).replace('--', '/');
      const models = (await isModelDir(path)) ? [{ name: repoId, path }] : [];
      // Each GGUF model of a repository that holds several is named by its quantization.
      for (const ggufPath of await ggufModelsIn(path)) {
        models.push({ name: `${repoId}:${quantizationOfFileName(basename(ggufPath)) ?? describeGguf(ggufPath).quantization}`, path: ggufPath });
      }
      return models;
    }),
  );
  return found.flat();
}

export interface RegistryOptions {
  model: string | null;
  modelsDirs: string[];
  cacheDir: string;
  hubCache?: string;
  /** How to fetch a named model that is not on disk, or null when it cannot be fetched. */
  fetchMissing?: (name: string) => (() => Promise<void>) | null;
}

interface ModelIndex {
  /** By name, in precedence order: --model, the models dirs, the Hugging Face cache, the built-in model. */
  models: Map<string, ModelEntry>;
  /** --model when it names a model on disk. */
  flagged: ModelEntry | null;
  builtAt: number;
}

async function buildIndex(options: RegistryOptions, builtinPath: string): Promise<ModelIndex> {
  const builtAt = Date.now();
  const candidates: [string, string, ModelEntry['origin']][] = [];
  const flaggedPath = options.model && options.model !== BUILTIN_MODEL ? resolve(options.model) : null;
  const flagged = flaggedPath && (await isModel(flaggedPath)) ? await foundModel(modelName(flaggedPath), flaggedPath, 'flag') : null;
  for (const dir of options.modelsDirs) {
    const root = await realpath(dir).catch(() => null);
    if (!root) continue;
    const paths = (await listDir(dir)).map((sub) => resolve(dir, sub));
    const served = await Promise.all(paths.map(async (path) => (await isModel(path)) && (await insideRoot(root, path))));
    paths.forEach((path, i) => served[i] && candidates.push([modelName(path), path, 'models-dir']));
  }
  for (const { name, path } of await huggingFaceModels(options.hubCache ?? huggingFaceHubCache())) candidates.push([name, path, 'hf-cache']);
  candidates.push([BUILTIN_MODEL, builtinPath, 'builtin']);
  const firstByName = new Map<string, [string, string, ModelEntry['origin']]>();
  for (const candidate of candidates) if (!firstByName.has(candidate[0]) && candidate[0] !== flagged?.name) firstByName.set(candidate[0], candidate);
  const found = await Promise.all([...firstByName.values()].map(([name, path, origin]) => foundModel(name, path, origin)));
  const models = new Map<string, ModelEntry>([...(flagged ? [flagged] : []), ...found].map((model) => [model.name, model]));
  return { models, flagged, builtAt };
}

/**
 * The models that can be named, from an index built off the request path: requests read it,
 * and it is rebuilt with asynchronous I/O when a watched folder changes, after a pull, and in the
 * background once it is INDEX_TTL_MS old (a download by another program changes files inside a
 * repository, below what the watch sees).
 */
export class ModelRegistry {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private readonly watchers: FSWatcher[] = [];
  private settle: NodeJS.Timeout | null = null;

  private constructor(
    private readonly options: RegistryOptions,
    private index: ModelIndex,
  ) {}

  static async open(options: RegistryOptions): Promise<ModelRegistry> {
    const builtinPath = join(options.cacheDir, BUILTIN_MODEL);
    const registry = new ModelRegistry(options, await buildIndex(options, builtinPath));
    registry.watch([...options.modelsDirs, options.hubCache ?? huggingFaceHubCache()]);
    return registry;
  }

  get builtinPath(): string {
    return join(this.options.cacheDir, BUILTIN_MODEL);
  }

  /** Rebuilds the index; a call while a rebuild runs waits for one that starts after it. */
  refresh(): Promise<void> {
    if (!this.running) {
      this.running = buildIndex(this.options, this.builtinPath)
        .then((index) => {
          this.index = index;
        })
        .finally(() => {
          this.running = null;
        });
      return this.running;
    }
    this.queued ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.queued = null;
        return this.refresh();
      });
    return this.queued;
  }

  close(): void {
    for (const watcher of this.watchers.splice(0)) watcher.close();
    if (this.settle) clearTimeout(this.settle);
  }

  /** Every model that can be named: the index, refreshed in the background when it is old. */
  list(): ModelEntry[] {
    return [...this.current().models.values()];
  }

  /** The model served when a request names none: --model, else the built-in one. */
  get defaultName(): string {
    const flagged = this.options.model;
    if (!flagged) return BUILTIN_MODEL;
    return this.current().flagged?.name ?? flagged;
  }

  resolve(name: string | undefined | null): ModelEntry {
    const wanted = name && name.length > 0 ? name : this.defaultName;
    const { models } = this.current();
    const found = models.get(wanted) ?? models.get(canonicalModelName(wanted));
    if (!found) {
      const fetchModel = this.options.fetchMissing?.(wanted);
      if (fetchModel) {
        const fetch = async (): Promise<ModelEntry> => {
          await fetchModel();
          await this.refresh();
          return this.resolve(wanted);
        };
        return { name: wanted, path: '', builtin: false, origin: 'hf-cache', modifiedAt: new Date(), sizeBytes: 0, fetch };
      }
      throw new ServeError('model_not_found', `model '${wanted}' not found; available: ${[...models.keys()].join(', ')}`, 'model');
    }
    return found;
  }

  private current(): ModelIndex {
    if (Date.now() - this.index.builtAt > INDEX_TTL_MS) this.refreshInBackground();
    return this.index;
  }

  private refreshInBackground(): void {
    if (this.running) return;
    // A folder that cannot be read leaves the last index in place until the next refresh.
    this.refresh().catch(() => undefined);
  }

  /** Watches each folder's own entries (not its tree): a model folder or repository added or removed. */
  private watch(dirs: string[]): void {
    for (const dir of dirs) {
      try {
        const watcher = watch(dir, () => {
          if (this.settle) clearTimeout(this.settle);
          this.settle = setTimeout(() => this.refreshInBackground(), WATCH_SETTLE_MS).unref();
        });
        watcher.on('error', () => watcher.close());
        watcher.unref();
        this.watchers.push(watcher);
      } catch {
        // A folder that does not exist yet is found by the time-to-live refresh once it does.
      }
    }
  }
}
