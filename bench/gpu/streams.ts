/**
 * Streams greedy completions from a running server at 1 and 16 concurrent streams, with the
 * bench's client (bench/client.ts): each request ignores EOS and generates exactly maxTokens.
 *
 * usage: node streams.js <base-url> <model-name> [side, default server]   (JSON on stdout)
 */
import { timedGeneration, type RequestTiming } from '../client.ts';
import { distinctPrompt, promptOfWords } from '../prompts.ts';
import { runLevels, WORKLOAD } from './stream-stats.ts';

const [baseUrl, model, side = 'server'] = process.argv.slice(2);
if (!baseUrl || !model) {
  process.stderr.write('usage: streams <base-url> <model-name>\n');
  process.exit(2);
}
const text = promptOfWords(WORKLOAD.promptWords);
const one = (): Promise<RequestTiming> => timedGeneration(baseUrl, { route: 'openai-completions', model, prompt: distinctPrompt(text), maxTokens: WORKLOAD.maxTokens, stream: true });

const levels = await runLevels(one);
process.stdout.write(`${JSON.stringify({ side, baseUrl, model, route: '/v1/completions (SSE)', promptWords: WORKLOAD.promptWords, levels }, null, 2)}\n`);
