/**
 * Pulling through a real server and the CLI, against a fake Hub on loopback: Ollama's /api/pull
 * progress stream, the model then served by name, --auto-pull, a 401, a pull while another model
 * is generating, and `mlx-server pull`.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { commitOf, FakeHub, tinyModelRepo } from './helpers/fake-hub.ts';
import { json, post, startServer, tempDir } from './helpers/server.ts';

const files = tinyModelRepo();
const hub = await new FakeHub({
  repos: { 'test/served': files, 'test/during': files, 'test/auto': files, 'test/private': files, 'test/cli': files },
  privateRepos: { 'test/private': 'hf_secret' },
}).start();
t.teardown(() => hub.close());
const hfHome = tempDir('hf-home-');
const hubEnv = { HF_ENDPOINT: hub.url, HF_HOME: hfHome, HF_HUB_CACHE: '', HF_TOKEN: '', HF_HUB_OFFLINE: '' };
const server = await startServer(['--auto-pull', '--idle-timeout', '0'], hubEnv);
t.teardown(() => server.stop());
const { url } = server;

/** Lines of a streamed body, read as the test asks for them. */
async function* lines(response: Response): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 1);
      if (line) yield line;
    }
  }
}

const startPull = (model: string): Promise<Response> => fetch(`${url}/api/pull`, { method: 'POST', body: JSON.stringify({ model }) });

t.test('POST /api/pull streams Ollama progress, then the model is served by name', async (t) => {
  const response = await startPull('test/served');
  t.equal(response.status, 200);
  t.match(response.headers.get('content-type'), /application\/x-ndjson/);
  const progress: Record<string, unknown>[] = [];
  for await (const line of lines(response)) progress.push(JSON.parse(line) as Record<string, unknown>);
  t.same(progress[0], { status: 'pulling manifest' });
  t.same(progress.at(-1), { status: 'success' });
  const weights = progress.filter((p) => p.status === 'pulling model.safetensors');
  t.ok(weights.length > 0, 'progress for the weights');
  t.match(weights.at(-1), { digest: /^sha256:[0-9a-f]{64}$/, total: files['model.safetensors']?.length, completed: files['model.safetensors']?.length });
  t.ok(progress.some((p) => p.status === 'verifying sha256 digest'));
  t.ok(progress.some((p) => p.status === 'writing manifest'));
  t.notOk(progress.some((p) => 'error' in p));

  const models = await json<{ data: { id: string }[] }>(`${url}/v1/models`);
  t.ok(models.body.data.some((m) => m.id === 'test/served'), '/v1/models lists it');
  const completion = await post(`${url}/v1/completions`, { model: 'test/served', prompt: 'Hello', max_tokens: 6, temperature: 0, ignore_eos: true });
  t.equal(completion.status, 200, JSON.stringify(completion.body));
  t.equal(completion.body.usage?.completion_tokens, 6, 'it generates');
  t.ok(server.logs.some((l) => l.includes('"event":"pull_progress"') && l.includes('"repo":"test/served"')), 'JSON progress in the log');
  t.ok(server.logs.some((l) => l.includes('"event":"pull_done"') && l.includes(commitOf('test/served'))));
});

t.test('a private model without a token: 401 in Ollama\'s shape', async (t) => {
  const r = await post(`${url}/api/pull`, { model: 'test/private', stream: false });
  t.equal(r.status, 401);
  t.match(r.body, { error: /private or gated.*HF_TOKEN/ });
  const bad = await post(`${url}/api/pull`, { model: '../etc', stream: false });
  t.equal(bad.status, 400);
  t.match(bad.body.error, /not a Hugging Face model id/);
});

t.test('--auto-pull: a request for a model that is not cached pulls it first', async (t) => {
  const completion = await post(`${url}/v1/completions`, { model: 'test/auto', prompt: 'Hi', max_tokens: 3, ignore_eos: true });
  t.equal(completion.status, 200, JSON.stringify(completion.body));
  t.ok(server.logs.some((l) => l.includes('"event":"pull_done"') && l.includes('"repo":"test/auto"')));
  const unknown = await post(`${url}/v1/completions`, { model: 'test/nowhere', prompt: 'Hi', max_tokens: 3 });
  t.equal(unknown.status, 404);
  t.match(unknown.body.error.message, /no model repository named 'test\/nowhere'/);
});

t.test('a pull while another model generates: the generation keeps streaming', async (t) => {
  const generation = await fetch(`${url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'Once', max_tokens: 300, temperature: 0, ignore_eos: true, stream: true }) });
  const chunks = lines(generation);
  await chunks.next();
  const held = hub.hold('test/during', 'model.safetensors', 200_000);
  const pull = lines(await startPull('test/during'));
  const pullLines: string[] = [];
  const pullDone = (async () => {
    for await (const line of pull) pullLines.push(line);
  })();
  await held.reached;
  let streamedWhileHeld = 0;
  for (; streamedWhileHeld < 10; streamedWhileHeld++) t.notOk((await chunks.next()).done);
  const health = await json<{ status: string }>(`${url}/admin/health`);
  t.equal(health.status, 200, 'other requests are answered while the pull is half-way');
  t.equal(streamedWhileHeld, 10, 'the generation streamed while the download was half-way');
  held.release();
  await pullDone;
  t.equal(JSON.parse(pullLines.at(-1) as string).status, 'success');
  let rest = 0;
  for await (const line of chunks) if (line !== 'data: [DONE]') rest++;
  t.ok(rest > 0, 'and finished');
});

t.test('mlx-server pull downloads into the cache with no server', async (t) => {
  const bin = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
  const cliHome = tempDir('hf-home-');
  const child = spawn(process.execPath, [bin, 'pull', 'test/cli'], { env: { ...process.env, ...hubEnv, HF_HOME: cliHome }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  t.equal(code, 0, stderr);
  const snapshot = join(cliHome, 'hub', 'models--test--cli', 'snapshots', commitOf('test/cli'));
  t.equal(stdout.trim(), snapshot, 'prints the snapshot folder');
  t.same(readFileSync(join(snapshot, 'config.json')), files['config.json']);
  t.match(stderr, /pulling test\/cli[\s\S]*model\.safetensors[\s\S]*pulled test\/cli/);

  const failed = spawn(process.execPath, [bin, 'pull', 'test/private'], { env: { ...process.env, ...hubEnv, HF_HOME: cliHome }, stdio: ['ignore', 'pipe', 'pipe'] });
  let failure = '';
  failed.stderr.on('data', (chunk: Buffer) => (failure += chunk.toString()));
  t.equal(await new Promise<number | null>((resolve) => failed.on('exit', resolve)), 1);
  t.match(failure, /mlx-server pull: 'test\/private' does not exist or is private or gated/);
});

t.test('offline, mlx-server pull and the server name the same models available here', async (t) => {
  const offline = { ...hubEnv, HF_ENDPOINT: 'http://127.0.0.1:9', HF_HOME: tempDir('hf-home-') };
  const cut = await startServer(['--idle-timeout', '0'], offline);
  t.teardown(() => cut.stop());
  const served = await post(`${cut.url}/api/pull`, { model: 'test/served', stream: false });
  t.equal(served.status, 503);
  const bin = fileURLToPath(new URL('../bin/mlx-server.js', import.meta.url));
  const child = spawn(process.execPath, [bin, 'pull', 'test/served'], { env: { ...process.env, ...offline }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  t.equal(await new Promise<number | null>((resolve) => child.on('exit', resolve)), 1);
  const available = (text: string): string | undefined => /Models available here: (.*)/.exec(text)?.[1]?.trim();
  t.equal(available(served.body.error), 'tiny-qwen3', 'the server offers the built-in model');
  t.equal(available(stderr), available(served.body.error), 'the command line says the same');
});
