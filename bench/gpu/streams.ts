/**
 * Streams greedy completions from a running server at 1 and 16 concurrent streams, with the
 * bench's client (bench/client.ts): each request ignores EOS and generates exactly maxTokens.
 *
 * usage: node streams.js <base-url> <model-name>   (JSON on stdout)
 */
import { timedGeneration, type RequestTiming } from '../client.ts';
import { distinctPrompt, promptOfWords } from '../prompts.ts';
import { levelFigures, WORKLOAD } from './stream-stats.ts';

const [baseUrl, model] = process.argv.slice(2);
if (!baseUrl || !model) {
  process.stderr.write('usage: streams <base-url> <model-name>\n');
  process.exit(2);
}
const text = promptOfWords(WORKLOAD.promptWords);
const one = (): Promise<RequestTiming> => timedGeneration(baseUrl, { route: 'openai-completions', model, prompt: distinctPrompt(text), maxTokens: WORKLOAD.maxTokens, stream: true });

// Warm-up, one round at the largest level: the load, and the GPU's first kernels (Vulkan compiles
// its pipelines on first use) for the batch sizes the levels reach.
await Promise.all(Array.from({ length: Math.max(...WORKLOAD.levels) }, one));
const levels = [];
for (const streams of WORKLOAD.levels) {
  const rounds: RequestTiming[][] = [];
  for (let r = 0; r < (WORKLOAD.rounds[streams] ?? 1); r++) rounds.push(await Promise.all(Array.from({ length: streams }, one)));
  levels.push(levelFigures(streams, WORKLOAD.maxTokens, rounds));
}
process.stdout.write(`${JSON.stringify({ side: 'server', baseUrl, model, route: '/v1/completions (SSE)', promptWords: WORKLOAD.promptWords, levels }, null, 2)}\n`);
