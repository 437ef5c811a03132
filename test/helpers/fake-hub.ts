/**
 * A stand-in for the Hugging Face Hub on loopback: the routes @huggingface/hub and our downloader
 * call (model info, file tree, resolve with Range), serving repositories the tests make. It can
 * drop a connection part-way through a file, corrupt a file, hold a file half-sent until told to
 * go on, and demand a token.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';

export type RepoFiles = Record<string, Buffer>;

export interface FakeHubOptions {
  repos: Record<string, RepoFiles>;
  /** Repositories that answer 401 unless this token is sent. */
  privateRepos?: Record<string, string>;
}

export interface HubRequest {
  method: string;
  path: string;
  range: string | null;
}

const isLfs = (path: string): boolean => path.endsWith('.safetensors') || path.endsWith('.gguf') || path === 'tokenizer.json';
const gitBlobSha1 = (content: Buffer): string => createHash('sha1').update(`blob ${content.length}\0`).update(content).digest('hex');
const sha256 = (content: Buffer): string => createHash('sha256').update(content).digest('hex');

/** The name huggingface_hub gives a file's blob in the cache. */
export const blobName = (path: string, content: Buffer): string => (isLfs(path) ? sha256(content) : gitBlobSha1(content));

export const commitOf = (repo: string): string => createHash('sha1').update(`commit of ${repo}`).digest('hex');

export class FakeHub {
  readonly requests: HubRequest[] = [];
  private readonly drops = new Map<string, { times: number; afterBytes: number }>();
  private readonly corrupted = new Set<string>();
  private readonly holds = new Map<string, { atByte: number; reached: () => void; released: Promise<void> }>();
  private server = createServer((req, res) => this.answer(req, res));
  url = '';

  constructor(private readonly options: FakeHubOptions) {}

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** The next `times` downloads of `repo/file` stop after `afterBytes` bytes of their body. */
  dropConnection(repo: string, file: string, afterBytes: number, times: number): void {
    this.drops.set(`${repo}/${file}`, { times, afterBytes });
  }

  /** Serves `repo/file` with one byte changed, as a broken proxy or disk would. */
  corrupt(repo: string, file: string): void {
    this.corrupted.add(`${repo}/${file}`);
  }

  /** Holds the download of `repo/file` after `atByte` bytes: `reached` resolves then, `release` lets it go on. */
  hold(repo: string, file: string, atByte: number): { reached: Promise<void>; release: () => void } {
    let release = (): void => {};
    let reached = (): void => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    const reachedPromise = new Promise<void>((resolve) => (reached = resolve));
    this.holds.set(`${repo}/${file}`, { atByte, reached, released });
    return { reached: reachedPromise, release };
  }

  downloadsOf(repo: string, file: string): HubRequest[] {
    return this.requests.filter((r) => r.path === `/${repo}/resolve/${commitOf(repo)}/${file}`);
  }

  private answer(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://hub');
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname, range: req.headers.range ?? null });
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree)\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const repo = api?.[1] ?? resolve?.[1];
    const files = repo ? this.options.repos[repo] : undefined;
    if (!repo || !files) {
      res.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'RepoNotFound' }).end(JSON.stringify({ error: 'Repository not found' }));
      return;
    }
    const token = this.options.privateRepos?.[repo];
    if (token && req.headers.authorization !== `Bearer ${token}`) {
      res.writeHead(401, { 'content-type': 'application/json', 'x-error-code': 'RepoNotFound' }).end(JSON.stringify({ error: 'Invalid username or password.' }));
      return;
    }
    const commit = commitOf(repo);
    if (api?.[2] === 'revision') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ _id: commit.slice(0, 24), id: repo, sha: commit, private: Boolean(token), gated: false, downloads: 0, likes: 0, lastModified: '2026-01-01T00:00:00.000Z' }));
      return;
    }
    if (api?.[2] === 'tree') {
      const tree = Object.entries(files).map(([path, content]) => ({
        type: 'file',
        path,
        size: content.length,
        oid: gitBlobSha1(isLfs(path) ? Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(content)}\nsize ${content.length}\n`) : content),
        ...(isLfs(path) ? { lfs: { oid: sha256(content), size: content.length, pointerSize: 134 } } : {}),
      }));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(tree));
      return;
    }
    const path = decodeURIComponent(resolve?.[3] ?? '');
    const content = files[path];
    if (!content || resolve?.[2] !== commit) {
      res.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'EntryNotFound' }).end(JSON.stringify({ error: 'Entry not found' }));
      return;
    }
    void this.sendFile(req, res, `${repo}/${path}`, path, commit, content);
  }

  private async sendFile(req: IncomingMessage, res: ServerResponse, key: string, path: string, commit: string, original: Buffer): Promise<void> {
    const content = this.corrupted.has(key) ? Buffer.from(original.map((byte, i) => (i === original.length >> 1 ? byte ^ 0xff : byte))) : original;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const end = range && range[2] ? Math.min(Number(range[2]), content.length - 1) : content.length - 1;
    const headers: Record<string, string | number> = {
      'content-type': 'application/octet-stream',
      etag: `"${blobName(path, original)}"`,
      'x-repo-commit': commit,
      'accept-ranges': 'bytes',
      'content-length': end - start + 1,
      ...(isLfs(path) ? { 'x-linked-etag': `"${sha256(original)}"`, 'x-linked-size': original.length } : {}),
    };
    if (range) res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${end}/${content.length}` });
    else res.writeHead(200, headers);
    const body = content.subarray(start, end + 1);
    const drop = this.drops.get(key);
    if (drop && drop.times > 0 && body.length > drop.afterBytes) {
      drop.times--;
      res.write(body.subarray(0, drop.afterBytes), () => res.destroy());
      return;
    }
    const hold = this.holds.get(key);
    if (hold && body.length > hold.atByte) {
      this.holds.delete(key);
      res.write(body.subarray(0, hold.atByte));
      hold.reached();
      await hold.released;
      res.end(body.subarray(hold.atByte));
      return;
    }
    res.end(body);
  }
}

const FIXTURE = fileURLToPath(new URL('../fixtures/parity/qwen3/', import.meta.url));

/** GPT-2's map from bytes to the printable characters byte-level BPE vocabularies are written in. */
function byteLevelAlphabet(): string[] {
  const printable = [...Array(256).keys()].filter((b) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174);
  let next = 256;
  return [...Array(256).keys()].map((b) => String.fromCodePoint(printable.includes(b) ? b : next++));
}

/**
 * The tiny Qwen3 of the parity fixtures (vocab 512) as a Hub repository, with a byte-level
 * tokenizer of 256 tokens so every id it encodes is inside the model's embedding table.
 */
export function tinyModelRepo(): RepoFiles {
  const vocab = Object.fromEntries(byteLevelAlphabet().map((char, id) => [char, id]));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
  const file = (name: string): Buffer => readFileSync(`${FIXTURE}${name}`);
  return {
    'config.json': file('config.json'),
    'generation_config.json': file('generation_config.json'),
    'model.safetensors': file('model.safetensors'),
    'tokenizer.json': Buffer.from(JSON.stringify(tokenizer)),
    'tokenizer_config.json': Buffer.from(JSON.stringify({ eos_token: null, model_max_length: 256 })),
    'README.md': Buffer.from('# a tiny test model\n'),
    'pytorch_model.bin': Buffer.from('not wanted'),
  };
}
