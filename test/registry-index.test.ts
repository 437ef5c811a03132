/**
 * The registry's index: requests read it and never the folders; it follows the folders through
 * the watch (well within the index's time-to-live) and through refresh().
 */
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { ModelRegistry } from '../src/models/registry.ts';
import { tempDir, waitFor } from './helpers/server.ts';

/** Well under the index's time-to-live: what arrives this fast came from the watch. */
const WATCH_MS = 2000;

const modelFolder = (path: string): void => {
  mkdirSync(path, { recursive: true });
  writeFileSync(join(path, 'config.json'), JSON.stringify({ model_type: 'qwen3' }));
};

const root = tempDir('registry-index-');
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const modelsDir = join(root, 'models');
const hubCache = join(root, 'hub');
mkdirSync(hubCache, { recursive: true });
modelFolder(join(modelsDir, 'first'));
const registry = await ModelRegistry.open({ model: null, modelsDirs: [modelsDir], cacheDir: root, hubCache });
t.teardown(() => registry.close());
const named = (name: string): true | undefined => (registry.list().some((m) => m.name === name) ? true : undefined);

t.test('a model folder added to a models dir is indexed by the watch', async (t) => {
  t.ok(named('first'));
  modelFolder(join(modelsDir, 'second'));
  t.ok(await waitFor('the watch to index the new folder', () => named('second'), WATCH_MS));
});

t.test('a repository that appears in the Hugging Face cache is indexed by the watch', async (t) => {
  const staging = join(root, 'staging');
  const commit = 'a'.repeat(40);
  modelFolder(join(staging, 'snapshots', commit));
  mkdirSync(join(staging, 'refs'));
  writeFileSync(join(staging, 'refs', 'main'), commit);
  renameSync(staging, join(hubCache, 'models--org--pulled'));
  t.ok(await waitFor('the watch to index the new repository', () => named('org/pulled'), WATCH_MS));
});

t.test('a request reads the index, not the folder; refresh() catches up', async (t) => {
  rmSync(join(modelsDir, 'first'), { recursive: true });
  t.equal(registry.resolve('first').name, 'first', 'resolved from the index, without touching the disk');
  await registry.refresh();
  t.throws(() => registry.resolve('first'), { code: 'model_not_found' });
});
