/**
 * The GGUF engine's multi-threaded decodes run on one kept CPU thread pool
 * (native/ggml-threadpool.c, built beside the bundle when the server starts): the pooled-graph
 * counter grows with them, and the pooled decodes give the same greedy text as the same weights
 * through MLX. Every pooled graph starts from the addon's own thread, not from whichever of
 * libuv's threads took the decode. Where the addon is missing, the worker says why and
 * llama.cpp runs as shipped.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { buildThreadPoolAddon } from '../src/cli/thread-pool-addon.ts';
import { THREAD_POOL_ADDON } from '../src/paths.ts';
import { loadThreadPool } from '../workers/llama-thread-pool.ts';
import { builtinModelGguf, post, startServer, tempDir } from './helpers/server.ts';

const BUILTIN = 'tiny-qwen3';
const GGUF = 'tiny-qwen3-pooled';

t.test('a missing addon is reported, not loaded', async (t) => {
  t.match(loadThreadPool(join(tempDir('no-pool-'), 'ggml-threadpool.node')), /is not built/);
});

const ON_LINUX = { skip: process.platform !== 'linux' && 'the pool is built on Linux only' };

/** The built-in model's weights as an F32 GGUF, in a models folder both pool tests serve from. */
const modelsDir = tempDir('pool-models-');
const GGUF_PATH = join(modelsDir, `${GGUF}.gguf`);
builtinModelGguf(GGUF_PATH);
t.teardown(() => rmSync(modelsDir, { recursive: true, force: true }));

t.test("every pooled graph starts from the addon's one thread, whichever libuv thread decodes", ON_LINUX, async (t) => {
  t.equal(buildThreadPoolAddon(), null, 'the addon builds');
  // In this process, before node-llama-cpp loads its backends, as the worker loads it.
  const pool = loadThreadPool(THREAD_POOL_ADDON);
  if (typeof pool === 'string') return t.fail(pool);
  const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: GGUF_PATH });
  const context = await model.createContext({ contextSize: 256, sequences: 1, threads: 2 });
  t.teardown(async () => {
    await context.dispose();
    await model.dispose();
  });
  const tokens: number[] = [];
  for await (const token of context.getSequence().evaluate(model.tokenize('The quick brown fox'), { temperature: 0 })) {
    if (tokens.push(token) === 24) break;
  }
  const { pooledGraphs, startingThreads } = pool.status();
  t.ok(pooledGraphs >= 24, `the 24 decodes ran on the pool (${pooledGraphs} graphs)`);
  t.equal(startingThreads, 1, 'every one was started from the same thread');
});

t.test('two-thread decodes run on the kept pool and give the MLX engine\'s greedy text', ON_LINUX, async (t) => {
  const server = await startServer(['--models-dir', modelsDir], { MLX_SERVER_LLAMA_THREADS: '2' });
  t.teardown(() => server.stop());
  const pooledGraphs = async (): Promise<number> => Number(/^mlx:llama_pooled_graphs_total (\S+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? NaN);
  const complete = (model: string) => post(`${server.url}/v1/completions`, { model, prompt: 'The quick brown fox', temperature: 0, max_tokens: 24, ignore_eos: true });

  t.equal(await pooledGraphs(), 0, 'nothing pooled before a GGUF model runs');
  const pooled = await complete(GGUF);
  t.equal(pooled.status, 200);
  t.equal(pooled.body.usage.completion_tokens, 24);
  t.ok((await pooledGraphs()) >= 24, `each of the 24 decodes ran on the pool (${await pooledGraphs()} graphs)`);
  const mlx = await complete(BUILTIN);
  t.equal(pooled.body.choices[0].text, mlx.body.choices[0].text, 'the same greedy text as the safetensors through MLX');
});
