/**
 * Downloads a model repository from the Hugging Face Hub into the Hugging Face cache, laid out as
 * huggingface_hub lays it out so mlx-lm and transformers see the same files:
 *
 *   models--ORG--NAME/blobs/<sha256 of LFS files | git blob sha1 of small files>
 *   models--ORG--NAME/snapshots/<commit>/<file> -> ../../blobs/<blob>
 *   models--ORG--NAME/refs/main                 (the commit)
 *
 * @huggingface/hub answers which commit `main` is and which files it holds. The bytes are fetched
 * here rather than with its downloadFileToCacheDir, which neither resumes, verifies, reports
 * progress nor orders its writes: each blob is written as `<blob>.incomplete`, resumed with an
 * HTTP Range request after an interruption, checked against the size and hash the Hub lists, and
 * renamed; the snapshot's links are made only once every blob is there (config.json last, since
 * its presence is what makes a folder a model) and refs/main is written last of all.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, readlink, rename, rm, stat, statfs, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { HubApiError, listFiles, modelInfo, type ListFileEntry } from '@huggingface/hub';
import { ServeError } from '../../core/errors.ts';
import { ggufFiles, isGgufPath, quantizationOfFileName, startsGgufModel } from '../../core/gguf/format.ts';
import { ggufModelsIn } from '../models/registry.ts';
import { splitQuantization, type HubSettings } from './settings.ts';

export type PullEvent =
  | { phase: 'manifest'; repo: string }
  | { phase: 'download'; repo: string; file: string; digest: string; fileTotal: number; fileCompleted: number; total: number; completed: number }
  | { phase: 'verify'; repo: string; file: string; digest: string }
  | { phase: 'link'; repo: string; commit: string }
  | { phase: 'done'; repo: string; commit: string; path: string; total: number; downloaded: number };

export interface PulledModel {
  repo: string;
  commit: string;
  /** The snapshot folder: the model's files. */
  path: string;
  totalBytes: number;
  /** Bytes fetched over the network by this pull (0 when everything was cached). */
  downloadedBytes: number;
}

export interface PullOptions {
  settings: HubSettings;
  onEvent?: (event: PullEvent) => void;
  /** Names of the models on disk, for the message when the Hub cannot be reached. */
  cachedModels: () => Promise<string[]>;
}

/** Files a model needs besides its weights; anything else in a repository (README, images, PyTorch or GGUF weights) is left. */
const MODEL_FILES = new Set([
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'chat_template.jinja',
  'chat_template.json',
]);
const WEIGHTS_INDEX = 'model.safetensors.index.json';
const DOWNLOAD_ATTEMPTS = 3;
const EVENT_INTERVAL_MS = 250;

interface PlannedFile {
  path: string;
  size: number;
  /** The blob's name: the sha256 the Hub lists for an LFS file, else its git blob sha1. */
  blob: string;
  lfs: boolean;
}

const digestOf = (file: PlannedFile): string => `${file.lfs ? 'sha256' : 'sha1'}:${file.blob}`;

export const repoFolder = (cacheDir: string, repo: string): string => join(cacheDir, `models--${repo.split('/').join('--')}`);

const megabytes = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

/** Turns what the Hub, the network or the disk threw into an error that says what to do. */
async function pullFailure(error: unknown, repo: string, options: PullOptions): Promise<ServeError> {
  if (error instanceof ServeError) return error;
  const { settings } = options;
  if (error instanceof HubApiError) return hubStatusFailure(error.statusCode, repo, settings);
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC') return new ServeError('disk_full', `the disk holding ${settings.cacheDir} is full; free some space (or set HF_HUB_CACHE to another disk) and pull '${repo}' again: it resumes where it stopped`);
  if (error instanceof TypeError && error.message === 'fetch failed') {
    const cause = error.cause as { code?: string; message?: string } | undefined;
    const cached = await options.cachedModels();
    return new ServeError('hub_unreachable',
      `cannot reach the Hugging Face Hub at ${settings.endpoint} (${cause?.code ?? cause?.message ?? 'network error'}): this machine is offline or the Hub is down, so '${repo}' cannot be downloaded. Models available here: ${cached.join(', ') || 'none'}`,
    );
  }
  return ServeError.from(error);
}

function hubStatusFailure(status: number, repo: string, settings: HubSettings): ServeError {
  const page = `${settings.endpoint}/${repo}`;
  if (status === 404) return new ServeError('model_not_found', `no model repository named '${repo}' on ${settings.endpoint}`, 'model');
  if (status === 401) {
    return new ServeError('hub_unauthorized',
      settings.token
        ? `the Hub refused the token (HF_TOKEN) for '${repo}': it is not valid, or it cannot read this private or gated repository (401)`
        : `'${repo}' does not exist or is private or gated: the Hub wants a token (401). Set HF_TOKEN to a token from ${settings.endpoint}/settings/tokens that can read it`,
    );
  }
  if (status === 403) return new ServeError('hub_forbidden', `access to '${repo}' is restricted (403): it is gated; accept its conditions at ${page} with the account whose token is in HF_TOKEN`);
  return new ServeError('download_failed', `the Hub answered ${status} for '${repo}'`);
}

const sizeOf = (path: string): Promise<number | null> => stat(path).then((s) => s.size, () => null);

function isInterruption(error: unknown): boolean {
  return error instanceof TypeError && (error.message === 'terminated' || error.message === 'fetch failed');
}

/** One process pulls a repository at a time: two appending to the same `.incomplete` would corrupt it. */
async function lockRepository(settings: HubSettings, repo: string): Promise<() => Promise<void>> {
  const path = join(settings.cacheDir, '.locks', basename(repoFolder(settings.cacheDir, repo)), 'mlx-server-pull.lock');
  await mkdir(dirname(path), { recursive: true });
  for (;;) {
    try {
      await writeFile(path, String(process.pid), { flag: 'wx' });
      return () => rm(path, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = Number(await readFile(path, 'utf8').catch(() => ''));
    if (holder > 0 && holder !== process.pid && processAlive(holder)) {
      throw new ServeError('download_in_progress', `'${repo}' is being downloaded by another process (pid ${holder}); wait for it to finish`);
    }
    await rm(path, { force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The state of one pull, shared by the downloads of its files. */
class PullJob {
  total = 0;
  done = 0;
  downloaded = 0;
  private lastEvent = 0;

  constructor(
    readonly repo: string,
    readonly commit: string,
    readonly folder: string,
    readonly options: PullOptions,
  ) {}

  url(file: string): string {
    return `${this.options.settings.endpoint}/${this.repo}/resolve/${this.commit}/${file.split('/').map(encodeURIComponent).join('/')}`;
  }

  progress(file: PlannedFile, fileCompleted: number, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastEvent < EVENT_INTERVAL_MS) return;
    this.lastEvent = now;
    this.options.onEvent?.({ phase: 'download', repo: this.repo, file: file.path, digest: digestOf(file), fileTotal: file.size, fileCompleted, total: this.total, completed: this.done + fileCompleted });
  }

  /** Makes blobs/<blob> hold `file`, downloading what is missing; a blob already there is trusted, as huggingface_hub trusts it. */
  async fetchBlob(file: PlannedFile): Promise<string> {
    const blobPath = join(this.folder, 'blobs', file.blob);
    if ((await sizeOf(blobPath)) !== file.size) {
      await mkdir(dirname(blobPath), { recursive: true });
      const partial = `${blobPath}.incomplete`;
      let digest = '';
      for (let attempt = 1; !digest; attempt++) {
        try {
          digest = await this.fetchInto(partial, file);
        } catch (error) {
          if (!isInterruption(error)) throw error;
          const reached = (await sizeOf(partial)) ?? 0;
          if (attempt >= DOWNLOAD_ATTEMPTS) {
            const cause = (error as Error & { cause?: { message?: string } }).cause?.message ?? (error as Error).message;
            throw new ServeError('download_failed', `the download of ${file.path} from ${this.options.settings.endpoint} was interrupted at ${reached} of ${file.size} bytes (${cause}); pull '${this.repo}' again to resume`);
          }
          await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
        }
      }
      this.options.onEvent?.({ phase: 'verify', repo: this.repo, file: file.path, digest: digestOf(file) });
      if (digest !== file.blob) {
        await rm(partial, { force: true });
        throw new ServeError('download_failed', `${file.path} of '${this.repo}' arrived corrupt: its ${file.lfs ? 'sha256' : 'git sha1'} is ${digest}, the Hub lists ${file.blob}. The bad copy was removed; pull again`);
      }
      await rename(partial, blobPath);
    }
    this.progress(file, file.size, true);
    this.done += file.size;
    return blobPath;
  }

  /** Downloads into `partial`, resuming from its current length; returns the hash of the whole file. */
  private async fetchInto(partial: string, file: PlannedFile): Promise<string> {
    let offset = (await sizeOf(partial)) ?? 0;
    if (offset > file.size) {
      await rm(partial);
      offset = 0;
    }
    const hash: Hash = createHash(file.lfs ? 'sha256' : 'sha1');
    if (!file.lfs) hash.update(`blob ${file.size}\0`);
    const hashPartial = async (): Promise<void> => {
      for await (const chunk of createReadStream(partial)) hash.update(chunk as Buffer);
    };
    if (offset === file.size) {
      await hashPartial();
      return hash.digest('hex');
    }
    const token = this.options.settings.token;
    const response = await fetch(this.url(file.path), {
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(offset > 0 ? { range: `bytes=${offset}-` } : {}) },
    });
    if (!response.ok || !response.body) throw hubStatusFailure(response.status, this.repo, this.options.settings);
    const resumed = response.status === 206;
    if (resumed) await hashPartial();
    else offset = 0;
    let fileCompleted = offset;
    // Each chunk is on disk before the next is read, so whatever arrived before a drop is kept for the resume.
    const out = await open(partial, resumed ? 'a' : 'w');
    try {
      for await (const chunk of response.body) {
        await out.write(chunk);
        hash.update(chunk);
        fileCompleted += chunk.length;
        this.downloaded += chunk.length;
        this.progress(file, fileCompleted);
      }
    } finally {
      await out.close();
    }
    if (fileCompleted < file.size) throw new TypeError('terminated', { cause: new Error(`the Hub closed the connection after ${fileCompleted} bytes`) });
    if (fileCompleted > file.size) {
      await rm(partial);
      throw new ServeError('download_failed', `${file.path} of '${this.repo}' arrived with ${fileCompleted} bytes, the Hub lists ${file.size}; pull again`);
    }
    return hash.digest('hex');
  }
}

function planned(entry: ListFileEntry): PlannedFile {
  if (entry.lfs) return { path: entry.path, size: entry.lfs.size, blob: entry.lfs.oid, lfs: true };
  if (!entry.oid) throw new ServeError('download_failed', `the Hub listed ${entry.path} without a hash`);
  return { path: entry.path, size: entry.size, blob: entry.oid, lfs: false };
}

/** The weights to fetch: the shards the index names, else model.safetensors, else every top-level .safetensors. */
async function chooseWeights(files: Map<string, PlannedFile>, indexJob: PullJob, repo: string): Promise<PlannedFile[]> {
  const index = files.get(WEIGHTS_INDEX);
  if (index) {
    const { weight_map: weightMap } = JSON.parse(await readFile(await indexJob.fetchBlob(index), 'utf8')) as { weight_map?: Record<string, string> };
    const shards = [...new Set(Object.values(weightMap ?? {}))];
    const missing = shards.filter((shard) => !files.has(shard));
    if (shards.length === 0 || missing.length > 0) throw new ServeError('unsupported_model', `'${repo}' has a ${WEIGHTS_INDEX} naming shards it does not hold: ${missing.join(', ') || '(none)'}`);
    return [index, ...shards.map((shard) => files.get(shard) as PlannedFile)];
  }
  const single = files.get('model.safetensors');
  if (single) return [single];
  return [...files.values()].filter((file) => file.path.endsWith('.safetensors'));
}

/** A snapshot already in the cache for refs/main, with a model (or the GGUF file of `quantization`), used when HF_HUB_OFFLINE forbids asking the Hub. */
async function cachedSnapshot(folder: string, quantization: string | null): Promise<string | null> {
  const commit = (await readFile(join(folder, 'refs', 'main'), 'utf8').catch(() => '')).trim();
  if (!commit) return null;
  const snapshot = join(folder, 'snapshots', commit);
  if (quantization === null) return (await sizeOf(join(snapshot, 'config.json'))) !== null ? commit : null;
  return (await ggufModelsIn(snapshot)).some((path) => quantizationOfFileName(basename(path)) === quantization) ? commit : null;
}

/**
 * The GGUF model of `quantization` in a repository that may hold many (the first by name when
 * several match, e.g. in subfolders): its file, or every part of a split model.
 */
function chooseGguf(listed: PlannedFile[], repo: string, quantization: string): PlannedFile[] {
  const ggufs = listed.filter((file) => isGgufPath(file.path)).sort((a, b) => a.path.localeCompare(b.path));
  const chosen = ggufs.find((file) => quantizationOfFileName(basename(file.path)) === quantization && startsGgufModel(file.path));
  if (chosen) {
    const paths = ggufFiles(chosen.path);
    const parts = paths.map((path) => ggufs.find((file) => file.path === path));
    const missing = paths.filter((_, i) => !parts[i]);
    if (missing.length > 0) throw new ServeError('download_failed', `'${repo}' lists ${chosen.path} but not ${missing.join(', ')}: the split model is incomplete`, 'model');
    return parts as PlannedFile[];
  }
  const offered = [...new Set(ggufs.flatMap((file) => quantizationOfFileName(basename(file.path)) ?? []))];
  throw new ServeError('model_not_found',
    offered.length > 0 ? `'${repo}' has no GGUF file quantized ${quantization}; it has ${offered.map((q) => `${repo}:${q}`).join(', ')}` : `'${repo}' holds no GGUF files; name it without ':${quantization}'`,
    'model',
  );
}

async function linkSnapshot(job: PullJob, files: PlannedFile[]): Promise<string> {
  const snapshot = join(job.folder, 'snapshots', job.commit);
  const ordered = [...files.filter((f) => f.path !== 'config.json'), ...files.filter((f) => f.path === 'config.json')];
  for (const file of ordered) {
    const link = join(snapshot, file.path);
    const target = relative(dirname(link), join(job.folder, 'blobs', file.blob));
    if ((await readlink(link).catch(() => null)) === target) continue;
    await mkdir(dirname(link), { recursive: true });
    await rm(link, { force: true });
    await symlink(target, link);
  }
  const ref = join(job.folder, 'refs', 'main');
  await mkdir(dirname(ref), { recursive: true });
  await writeFile(`${ref}.${process.pid}.tmp`, job.commit);
  await rename(`${ref}.${process.pid}.tmp`, ref);
  return snapshot;
}

async function assertSpace(settings: HubSettings, folder: string, files: PlannedFile[], repo: string): Promise<void> {
  let needed = 0;
  for (const file of files) {
    const blob = join(folder, 'blobs', file.blob);
    if ((await sizeOf(blob)) === file.size) continue;
    needed += file.size - Math.min(file.size, (await sizeOf(`${blob}.incomplete`)) ?? 0);
  }
  const disk = await statfs(folder);
  const free = disk.bavail * disk.bsize;
  if (needed > free) throw new ServeError('disk_full', `not enough disk space for '${repo}' in ${settings.cacheDir}: it needs ${megabytes(needed)} more, ${megabytes(free)} is free`);
}

/**
 * Pulls `ref` at its main branch into the cache; returns the snapshot folder. `ref` is an ORG/NAME
 * id (a safetensors model: its config, tokenizer and weights), or ORG/NAME:QUANT (only the GGUF
 * file of that quantization).
 */
export async function pullModel(ref: string, options: PullOptions): Promise<PulledModel> {
  const { settings } = options;
  const { repo, quantization } = splitQuantization(ref);
  const folder = repoFolder(settings.cacheDir, repo);
  if (settings.offline) {
    const commit = await cachedSnapshot(folder, quantization);
    if (commit) return { repo, commit, path: join(folder, 'snapshots', commit), totalBytes: 0, downloadedBytes: 0 };
    throw new ServeError('hub_unreachable', `HF_HUB_OFFLINE is set, so '${repo}' cannot be downloaded. Models available here: ${(await options.cachedModels()).join(', ') || 'none'}`);
  }
  if (settings.token && !settings.token.startsWith('hf_')) throw new ServeError('hub_unauthorized', "HF_TOKEN does not hold a Hugging Face token (they start with 'hf_')");
  try {
    options.onEvent?.({ phase: 'manifest', repo });
    const credentials = { hubUrl: settings.endpoint, ...(settings.token ? { accessToken: settings.token } : {}) };
    const { sha: commit } = await modelInfo({ name: repo, revision: 'main', additionalFields: ['sha'], ...credentials });
    if (typeof commit !== 'string' || !/^[0-9a-f]{40}$/.test(commit)) throw new ServeError('download_failed', `the Hub gave no commit for '${repo}'`);
    const files = new Map<string, PlannedFile>();
    const ggufs: PlannedFile[] = [];
    for await (const entry of listFiles({ repo, revision: commit, recursive: quantization !== null, ...credentials })) {
      if (entry.type !== 'file') continue;
      if (MODEL_FILES.has(entry.path) || entry.path.endsWith('.safetensors') || entry.path === WEIGHTS_INDEX) files.set(entry.path, planned(entry));
      else if (isGgufPath(entry.path)) ggufs.push(planned(entry));
    }
    if (quantization === null && !files.has('config.json')) {
      const hint = ggufs.length > 0 ? `; it holds GGUF files: name one by its quantization, e.g. ${repo}:${quantizationOfFileName(basename(ggufs[0]?.path ?? '')) ?? 'Q4_K_M'}` : '';
      throw new ServeError('unsupported_model', `'${repo}' has no config.json: it is not a transformers or MLX model repository${hint}`);
    }
    await mkdir(folder, { recursive: true });
    const release = await lockRepository(settings, repo);
    try {
      const job = new PullJob(repo, commit, folder, options);
      const wanted = quantization !== null ? chooseGguf(ggufs, repo, quantization) : await safetensorsModelFiles(files, new PullJob(repo, commit, folder, { ...options, onEvent: () => {} }), repo);
      job.total = wanted.reduce((sum, file) => sum + file.size, 0);
      await assertSpace(settings, folder, wanted, repo);
      for (const file of wanted) await job.fetchBlob(file);
      options.onEvent?.({ phase: 'link', repo, commit });
      const path = await linkSnapshot(job, wanted);
      options.onEvent?.({ phase: 'done', repo, commit, path, total: job.total, downloaded: job.downloaded });
      return { repo, commit, path, totalBytes: job.total, downloadedBytes: job.downloaded };
    } finally {
      await release();
    }
  } catch (error) {
    throw await pullFailure(error, ref, options);
  }
}

/** A safetensors model's files: config, tokenizer and the weights chooseWeights picks. */
async function safetensorsModelFiles(files: Map<string, PlannedFile>, indexJob: PullJob, repo: string): Promise<PlannedFile[]> {
  const weights = await chooseWeights(files, indexJob, repo);
  if (weights.length === 0) throw new ServeError('unsupported_model', `'${repo}' has no .safetensors weights (GGUF and PyTorch .bin repositories cannot be served; look for an MLX or safetensors version, e.g. under mlx-community/)`);
  return [...[...files.values()].filter((f) => MODEL_FILES.has(f.path)), ...weights];
}
