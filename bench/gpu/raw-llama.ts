/**
 * llama.cpp's own speed on this machine: the same libllama build the server loads, driven
 * through node-llama-cpp in a plain loop, no HTTP and no worker. The context is made as the
 * server's llama engine makes it (workers/llama-engine.ts: up to 4096 cells per sequence, 16
 * sequences); each request evaluates a distinct prompt on its own sequence, greedy, and takes
 * exactly maxTokens tokens (EOS ignored), as the HTTP client asks of the server.
 *
 * usage: node raw-llama.js <model.gguf> [cuda|vulkan|false]   (JSON on stdout)
 */
import { getLlama, LlamaLogLevel, type LlamaContextSequence, type Token } from 'node-llama-cpp';
import type { RequestTiming } from '../client.ts';
import { distinctPrompt, promptOfWords } from '../prompts.ts';
import { runLevels, WORKLOAD } from './stream-stats.ts';

const [modelPath, gpuArg = 'cuda'] = process.argv.slice(2);
if (!modelPath || !['cuda', 'vulkan', 'false'].includes(gpuArg)) {
  process.stderr.write('usage: raw-llama <model.gguf> [cuda|vulkan|false]\n');
  process.exit(2);
}
const gpu = gpuArg === 'false' ? false : (gpuArg as 'cuda' | 'vulkan');
const llama = await getLlama({ gpu, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const sequences = Math.max(...WORKLOAD.levels);
const context = await model.createContext({ contextSize: Math.min(model.trainContextSize, 4096), sequences, threads: Math.max(1, llama.cpuMathCores) });
const free: LlamaContextSequence[] = Array.from({ length: sequences }, () => context.getSequence());
const text = promptOfWords(WORKLOAD.promptWords);

async function one(): Promise<RequestTiming> {
  const sequence = free.pop() as LlamaContextSequence;
  try {
    await sequence.clearHistory();
    const ids = model.tokenize(distinctPrompt(text), true) as Token[];
    const chunkTimes: number[] = [];
    const startedAt = performance.now();
    for await (const token of sequence.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
      void token;
      chunkTimes.push(performance.now());
      if (chunkTimes.length === WORKLOAD.maxTokens) break;
    }
    return { startedAt, chunkTimes, endedAt: performance.now(), promptTokens: ids.length, completionTokens: chunkTimes.length };
  } finally {
    free.push(sequence);
  }
}

const levels = await runLevels(one);
const gpuName = (await llama.getGpuDeviceNames()).join(', ');
process.stdout.write(`${JSON.stringify({ side: 'raw node-llama-cpp', modelPath, gpu: llama.gpu, gpuName, gpuLayers: model.gpuLayers, contextSize: context.contextSize, promptWords: WORKLOAD.promptWords, levels }, null, 2)}\n`);
await context.dispose();
await model.dispose();
