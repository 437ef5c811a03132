/**
 * The downloader against a fake Hub on loopback: the cache layout huggingface_hub makes, resuming
 * after a dropped connection, a corrupt file caught by its hash, and the errors a user can meet.
 */
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import type { ServeError } from '../core/errors.ts';
import { httpStatus } from '../src/http/status.ts';
import { pullModel, repoFolder, type PullEvent } from '../src/hub/download.ts';
import { hubSettings, type HubSettings } from '../src/hub/settings.ts';
import { huggingFaceModels } from '../src/models/registry.ts';
import { blobName, commitOf, FakeHub, tinyModelRepo } from './helpers/fake-hub.ts';
import { tempDir } from './helpers/server.ts';

const files = tinyModelRepo();
const WANTED = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
const hub = await new FakeHub({
  repos: { 'test/tiny': files, 'test/drop': files, 'test/corrupt': files, 'test/private': files, 'test/full': files },
  privateRepos: { 'test/private': 'hf_secret' },
}).start();
t.teardown(() => hub.close());

const settingsFor = (cacheDir: string, extra: Partial<HubSettings> = {}): HubSettings => ({ endpoint: hub.url, token: null, offline: false, cacheDir, ...extra });
const pull = (repo: string, settings: HubSettings, onEvent?: (e: PullEvent) => void) => pullModel(repo, { settings, cachedModels: async () => (await huggingFaceModels(settings.cacheDir)).map((m) => m.name), ...(onEvent ? { onEvent } : {}) });
const failure = async (promise: Promise<unknown>): Promise<ServeError> => {
  try {
    await promise;
  } catch (error) {
    return error as ServeError;
  }
  throw new Error('expected the pull to fail');
};

t.test('settings come from the environment as huggingface_hub reads it', async (t) => {
  const home = tempDir('hf-home-');
  writeFileSync(join(home, 'token'), 'hf_fromfile\n');
  t.same(hubSettings({ HF_HOME: home }), { endpoint: 'https://huggingface.co', token: 'hf_fromfile', offline: false, cacheDir: join(home, 'hub') });
  const s = hubSettings({ HF_HOME: home, HF_HUB_CACHE: '/c', HF_ENDPOINT: 'http://mirror/', HF_TOKEN: 'hf_env', HF_HUB_OFFLINE: '1' });
  t.same(s, { endpoint: 'http://mirror', token: 'hf_env', offline: true, cacheDir: '/c' });
});

t.test('a fresh pull lays out the cache exactly as huggingface_hub does', async (t) => {
  const cacheDir = tempDir('hf-cache-');
  const events: PullEvent[] = [];
  const pulled = await pull('test/tiny', settingsFor(cacheDir), (e) => events.push(e));
  const folder = repoFolder(cacheDir, 'test/tiny');
  const commit = commitOf('test/tiny');
  t.equal(folder, join(cacheDir, 'models--test--tiny'));
  t.equal(pulled.commit, commit);
  t.equal(pulled.path, join(folder, 'snapshots', commit));
  t.equal(readFileSync(join(folder, 'refs', 'main'), 'utf8'), commit, 'refs/main holds the commit, no newline');
  t.same(readdirSync(pulled.path).sort(), WANTED, 'only the files a model needs: no README, no .bin');
  for (const name of WANTED) {
    const link = join(pulled.path, name);
    t.ok(lstatSync(link).isSymbolicLink(), `${name} is a symlink`);
    t.equal(readlinkSync(link), `../../blobs/${blobName(name, files[name] as Buffer)}`, `${name} points at its blob by relative path`);
    t.same(readFileSync(link), files[name], `${name} has the Hub's bytes`);
  }
  t.same(readdirSync(join(folder, 'blobs')).sort(), WANTED.map((n) => blobName(n, files[n] as Buffer)).sort(), 'no .incomplete left behind');
  t.same((await huggingFaceModels(cacheDir)).map((m) => m.name), ['test/tiny'], 'the registry finds it by name');
  const phases = [...new Set(events.map((e) => e.phase))];
  t.same(phases, ['manifest', 'download', 'verify', 'link', 'done']);
  const last = events.filter((e) => e.phase === 'download').at(-1);
  t.ok(last && last.phase === 'download' && last.completed === last.total, 'progress ends at the total');
  t.equal(pulled.totalBytes, WANTED.reduce((sum, n) => sum + (files[n] as Buffer).length, 0));

  const again = await pull('test/tiny', settingsFor(cacheDir));
  t.equal(again.downloadedBytes, 0, 'a second pull downloads nothing');
  const offline = await pull('test/tiny', settingsFor(cacheDir, { offline: true }));
  t.equal(offline.path, pulled.path, 'HF_HUB_OFFLINE serves what is cached');
});

t.test('a pull resumes after the connection drops mid-file', async (t) => {
  const cacheDir = tempDir('hf-cache-');
  const weights = files['model.safetensors'] as Buffer;
  const blob = join(repoFolder(cacheDir, 'test/drop'), 'blobs', blobName('model.safetensors', weights));
  hub.dropConnection('test/drop', 'model.safetensors', 100_000, 4);
  const error = await failure(pull('test/drop', settingsFor(cacheDir)));
  t.equal(error.code, 'download_failed');
  t.match(error.message, /interrupted at 300000 of \d+ bytes.*pull 'test\/drop' again to resume/);
  t.equal(readFileSync(`${blob}.incomplete`).length, 300_000, 'three attempts, each resumed where the last stopped');
  t.notOk(existsSync(join(repoFolder(cacheDir, 'test/drop'), 'refs', 'main')), 'no ref: the snapshot does not look complete');
  t.same(await huggingFaceModels(cacheDir), [], 'the registry does not see a half-pulled model');

  const pulled = await pull('test/drop', settingsFor(cacheDir));
  t.same(readFileSync(join(pulled.path, 'model.safetensors')), weights);
  const ranges = hub.downloadsOf('test/drop', 'model.safetensors').map((r) => r.range);
  t.same(ranges, [null, 'bytes=100000-', 'bytes=200000-', 'bytes=300000-', 'bytes=400000-'], 'each attempt asked only for the missing bytes');
  t.equal(pulled.downloadedBytes < pulled.totalBytes, true, 'the second pull did not fetch the first part again');
});

t.test('a corrupt file is caught by its sha256 and removed', async (t) => {
  const cacheDir = tempDir('hf-cache-');
  hub.corrupt('test/corrupt', 'model.safetensors');
  const error = await failure(pull('test/corrupt', settingsFor(cacheDir)));
  t.equal(error.code, 'download_failed');
  t.equal(httpStatus(error), 502);
  t.match(error.message, /model\.safetensors of 'test\/corrupt' arrived corrupt: its sha256 is [0-9a-f]{64}, the Hub lists [0-9a-f]{64}/);
  const blobs = readdirSync(join(repoFolder(cacheDir, 'test/corrupt'), 'blobs'));
  t.notOk(blobs.some((b) => b.startsWith(blobName('model.safetensors', files['model.safetensors'] as Buffer))), 'no blob, complete or partial, for the bad file');
  t.same(await huggingFaceModels(cacheDir), []);
});

t.test('errors say what happened and what to do', async (t) => {
  const cacheDir = tempDir('hf-cache-');
  const unauthorized = await failure(pull('test/private', settingsFor(cacheDir)));
  t.equal(httpStatus(unauthorized), 401);
  t.match(unauthorized.message, /private or gated.*Set HF_TOKEN/);
  const refused = await failure(pull('test/private', settingsFor(cacheDir, { token: 'hf_wrong' })));
  t.match(refused.message, /refused the token/);
  const granted = await pull('test/private', settingsFor(cacheDir, { token: 'hf_secret' }));
  t.ok(existsSync(join(granted.path, 'config.json')), 'the right token pulls it');

  const missing = await failure(pull('test/nothing', settingsFor(cacheDir)));
  t.equal(httpStatus(missing), 404);
  t.match(missing.message, /no model repository named 'test\/nothing'/);

  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const nobody = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
  await new Promise((resolve) => closed.close(resolve));
  const offline = await failure(pull('test/tiny', settingsFor(cacheDir, { endpoint: nobody })));
  t.equal(offline.code, 'hub_unreachable');
  t.match(offline.message, `cannot reach the Hugging Face Hub at ${nobody} (ECONNREFUSED)`);
  t.match(offline.message, /offline.*Models available here: test\/private/);

  const switchedOff = await failure(pull('test/tiny', settingsFor(cacheDir, { offline: true })));
  t.match(switchedOff.message, /HF_HUB_OFFLINE is set.*Models available here: test\/private/);
});

t.test('a full disk is reported as such, and the partial file is kept for later', async (t) => {
  const cacheDir = tempDir('hf-cache-');
  const weights = files['model.safetensors'] as Buffer;
  const blobs = join(repoFolder(cacheDir, 'test/full'), 'blobs');
  // Writes to /dev/full fail with ENOSPC, as writes to a full disk do.
  mkdirSync(blobs, { recursive: true });
  symlinkSync('/dev/full', join(blobs, `${blobName('model.safetensors', weights)}.incomplete`));
  const error = await failure(pull('test/full', settingsFor(cacheDir)));
  t.equal(httpStatus(error), 507);
  t.equal(error.code, 'disk_full');
  t.match(error.message, /is full; free some space .* it resumes where it stopped/);
});
