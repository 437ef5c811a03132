/**
 * The engine's threads run below the main thread, which streams and answers health: every
 * thread of the server but the main one at --engine-nice, whichever engine loaded, and none
 * lowered when it is 0.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { parseServerConfig } from '../src/config.ts';
import { builtinModelGguf, post, startServer, tempDir, type TestServer } from './helpers/server.ts';

const BUILTIN = 'tiny-qwen3';
const GGUF = 'tiny-qwen3-f32';

/** Each thread's nice value, field 19 of its stat (counted after the name, which may hold spaces). */
function threadNices(pid: number): { tid: number; nice: number }[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((entry) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${entry}/stat`, 'utf8');
      return [{ tid: Number(entry), nice: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]) }];
    } catch {
      return [];
    }
  });
}

async function generate(t: Test, server: TestServer, model: string): Promise<void> {
  const reply = await post(`${server.url}/v1/completions`, { model, prompt: 'The quick brown fox', max_tokens: 8, temperature: 0 });
  t.equal(reply.status, 200, `${model} answers`);
}

t.test('--engine-nice is a nice value, 0 to 19, 10 unless given', async (t) => {
  t.equal(parseServerConfig([], {}).engineNice, 10);
  t.equal(parseServerConfig(['--engine-nice', '0'], {}).engineNice, 0);
  t.equal(parseServerConfig([], { MLX_SERVER_ENGINE_NICE: '19' }).engineNice, 19, 'its twin');
  t.throws(() => parseServerConfig(['--engine-nice', '20'], {}), /--engine-nice must be an integer >= 0 and <= 19/);
  t.throws(() => parseServerConfig(['--engine-nice', '-1'], {}), /--engine-nice/);
});

t.test('every thread but the main one runs at --engine-nice, for a llama.cpp and an MLX model', { skip: process.platform !== 'linux' && 'nice is per thread on Linux only' }, async (t) => {
  const modelsDir = tempDir('engine-nice-');
  builtinModelGguf(join(modelsDir, `${GGUF}.gguf`));
  const server = await startServer(['--models-dir', modelsDir, '--engine-nice', '7']);
  t.teardown(async () => {
    await server.stop();
    rmSync(modelsDir, { recursive: true, force: true });
  });
  const pid = server.serverPid;
  t.ok(pid > 0, 'the server names its pid');
  for (const model of [GGUF, BUILTIN]) {
    await generate(t, server, model);
    const threads = threadNices(pid);
    t.same(threads.find((thread) => thread.tid === pid)?.nice, 0, `${model}: the main thread keeps the server's nice value`);
    const others = threads.filter((thread) => thread.tid !== pid);
    t.ok(others.length >= 4, `${model}: the server runs other threads (${others.length})`);
    t.same(others.filter((thread) => thread.nice !== 7), [], `${model}: every other thread at nice 7`);
  }
});

t.test('--engine-nice 0 lowers no thread', { skip: process.platform !== 'linux' && 'nice is per thread on Linux only' }, async (t) => {
  const server = await startServer([], { MLX_SERVER_ENGINE_NICE: '0' });
  t.teardown(() => server.stop());
  await generate(t, server, BUILTIN);
  t.same(threadNices(server.serverPid).filter((thread) => thread.nice !== 0), []);
});
