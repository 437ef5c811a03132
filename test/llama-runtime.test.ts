/**
 * A machine where no prebuilt llama.cpp binary loads: loading a GGUF model fails with one line
 * that names the package to install, in each API's error shape, and MLX models keep working.
 * Asking for a build this machine lacks (MLX_SERVER_LLAMA_GPU=cuda; the CUDA package is not
 * installed here) is such a machine for llama.cpp.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { builtinModelGguf, post, startServer, tempDir } from './helpers/server.ts';

const BUILTIN = 'tiny-qwen3';
const GGUF = 'tiny-qwen3-nobinary';
const modelsDir = tempDir('no-binary-models-');
builtinModelGguf(join(modelsDir, `${GGUF}.gguf`));
t.teardown(() => rmSync(modelsDir, { recursive: true, force: true }));
const target = `${process.platform === 'darwin' ? 'mac' : process.platform === 'win32' ? 'win' : process.platform}-${process.arch}`;

t.test('no fitting binary: one line naming the package, and MLX still serves', async (t) => {
  const server = await startServer(['--models-dir', modelsDir], { MLX_SERVER_LLAMA_GPU: 'cuda' });
  t.teardown(() => server.stop());
  const body = { model: GGUF, prompt: 'Hello', max_tokens: 4 };
  const openai = await post(`${server.url}/v1/completions`, body);
  t.equal(openai.status, 500);
  t.equal(openai.body.error.code, 'runtime_check_failed');
  t.match(openai.body.error.message, new RegExp(`install @node-llama-cpp/${target}-cuda to serve GGUF models$`));
  t.notMatch(openai.body.error.message, /\n/, 'one line');
  const ollama = await post(`${server.url}/api/generate`, { model: GGUF, prompt: 'Hello', stream: false });
  t.equal(ollama.status, 500);
  t.match(ollama.body.error, `@node-llama-cpp/${target}-cuda`);
  const mlx = await post(`${server.url}/v1/completions`, { ...body, model: BUILTIN });
  t.equal(mlx.status, 200, 'the MLX engine keeps working');
  t.equal(mlx.body.usage.completion_tokens, 4);
});

t.test('an unknown build name is refused the same way', async (t) => {
  const server = await startServer(['--models-dir', modelsDir], { MLX_SERVER_LLAMA_GPU: 'tpu' });
  t.teardown(() => server.stop());
  const reply = await post(`${server.url}/v1/completions`, { model: GGUF, prompt: 'Hello', max_tokens: 4 });
  t.equal(reply.status, 500);
  t.match(reply.body.error.message, 'MLX_SERVER_LLAMA_GPU is "tpu": it must be one of auto, cuda, vulkan, metal, false');
});
