/** A model name from a request never reaches a folder outside the configured roots. */
import { cpSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { json, post, startServer, tempDir, TEST_CACHE_DIR } from './helpers/server.ts';
import { fileURLToPath } from 'node:url';

/** Any folder with a config.json is a model to the registry; the parity fixture is a small one. */
const FIXTURE = fileURLToPath(new URL('./fixtures/parity/qwen3/', import.meta.url));

const outside = tempDir('mlx-outside-');
const outsideModel = join(outside, 'secret-model');
cpSync(FIXTURE, outsideModel, { recursive: true });
const modelsDir = tempDir('mlx-models-');
mkdirSync(join(modelsDir, 'inside-model'));
cpSync(FIXTURE, join(modelsDir, 'inside-model'), { recursive: true });
symlinkSync(outsideModel, join(modelsDir, 'escape'));

const server = await startServer(['--idle-timeout', '0', '--models-dir', modelsDir, '--cache-dir', TEST_CACHE_DIR]);
t.teardown(() => server.stop());

t.test('models dir lists what it holds, not what a symlink leads to', async (t) => {
  const { body } = await json<{ data: { id: string }[] }>(`${server.url}/v1/models`);
  const names = body.data.map((m) => m.id);
  t.ok(names.includes('inside-model'));
  t.notOk(names.includes('escape'), 'the symlink out of the models dir is not a model');
});

const tricks = ['escape', '..', '../secret-model', outsideModel, `${modelsDir}/../${outside.split('/').pop()}/secret-model`, '%2e%2e%2fsecret-model', '..%2Fsecret-model', 'inside-model/../../secret-model', 'inside-model/', './inside-model', ''.padEnd(300, '../')];

t.test('path tricks are unknown models on both API shapes', async (t) => {
  for (const model of tricks) {
    const openai = await post(`${server.url}/v1/completions`, { model, prompt: 'x', max_tokens: 1 });
    t.equal(openai.status, 404, `OpenAI: ${JSON.stringify(model).slice(0, 40)} -> 404`);
    const ollama = await post(`${server.url}/api/generate`, { model, prompt: 'x', stream: false, options: { num_predict: 1 } });
    t.equal(ollama.status, 404, `Ollama: ${JSON.stringify(model).slice(0, 40)} -> 404`);
    const load = await post(`${server.url}/admin/load`, { model });
    t.equal(load.status, 404, `admin load: ${JSON.stringify(model).slice(0, 40)} -> 404`);
  }
});
