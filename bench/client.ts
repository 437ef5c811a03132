/**
 * The bench's timed generation calls on each API shape, over our one API client's keep-alive
 * agent. A "chunk" is one streamed event carrying text; a chunk normally holds one token, more
 * when the detokenizer held back part of a character or several events arrived in one read.
 */
import { generationBody, generationEvent, isOpenAiRoute, recordReader, ROUTE_PATHS, send, type ApiRoute, type GenerationEvent } from '../src/client/api-client.ts';
import type { MetricName, Recorders } from './histograms.ts';

/** What one generation looked like from the client (or from the raw loop), in performance.now() ms. */
export interface RequestTiming {
  startedAt: number;
  /** Arrival of each chunk of generated text; empty when not streamed. */
  chunkTimes: number[];
  endedAt: number;
  promptTokens: number;
  completionTokens: number;
}

export interface GenerationCall {
  route: ApiRoute;
  model: string;
  prompt: string;
  maxTokens: number;
  stream: boolean;
}

/**
 * Greedy, and on the OpenAI routes without end-of-sequence stops, so every run generates exactly
 * maxTokens tokens. Ollama's options have no ignore_eos: there a random-weight model could stop
 * early (each token is EOS with odds ~1 in 76k), and the counted tokens are what the reply says.
 */
const requestBody = (call: GenerationCall): Record<string, unknown> => generationBody({ ...call, temperature: 0, seed: 1 });

export async function timedGeneration(baseUrl: string, call: GenerationCall): Promise<RequestTiming> {
  const chunkTimes: number[] = [];
  let promptTokens = 0;
  let completionTokens = 0;
  const take = (event: GenerationEvent, at: number | null): void => {
    if (event.error !== null) throw new Error(event.error);
    if (at !== null && event.text) chunkTimes.push(at);
    if (event.completionTokens !== null) {
      promptTokens = event.promptTokens ?? 0;
      completionTokens = event.completionTokens;
    }
  };
  let streamError: unknown = null;
  const onRecord = recordReader(isOpenAiRoute(call.route) ? 'sse' : 'ndjson', (record, at) => take(generationEvent(record), at));
  const guarded = call.stream
    ? (text: string, at: number): void => {
        try {
          onRecord(text, at);
        } catch (error) {
          streamError ??= error;
        }
      }
    : undefined;
  const startedAt = performance.now();
  const reply = await send(baseUrl + ROUTE_PATHS[call.route], 'POST', requestBody(call), guarded);
  const endedAt = performance.now();
  if (streamError) throw streamError;
  if (reply.status !== 200) throw new Error(`${call.route}: HTTP ${reply.status} ${reply.body.slice(0, 300)}`);
  if (!call.stream) take(generationEvent(JSON.parse(reply.body) as Record<string, unknown>), null);
  if (completionTokens === 0) throw new Error(`${call.route}: the reply reported no generated tokens`);
  return { startedAt, chunkTimes, endedAt, promptTokens, completionTokens };
}

/** Files one generation's figures under (model, scenario). */
export function recordTiming(recorders: Recorders, model: string, scenario: string, timing: RequestTiming): void {
  const put = (metric: MetricName, value: number): void => recorders.record(model, scenario, metric, value);
  const e2e = timing.endedAt - timing.startedAt;
  put('e2e', e2e);
  put('gen_tps', timing.completionTokens / (e2e / 1000));
  const [first] = timing.chunkTimes;
  if (first === undefined) return;
  put('ttft', first - timing.startedAt);
  put('prompt_tps', timing.promptTokens / ((first - timing.startedAt) / 1000));
  for (let i = 1; i < timing.chunkTimes.length; i++) put('itl', (timing.chunkTimes[i] as number) - (timing.chunkTimes[i - 1] as number));
}

/**
 * A round in which a request failed is run again, on new prompts, at most this many times over:
 * llama-server fails the odd random-weight request whose last token ends inside a UTF-8
 * character, after streaming all of it ("does not match the expected Content-only format"),
 * which has to do with the text, not the timing.
 */
export const FAILED_ROUND_RETRIES = 6;

/**
 * Runs `round` (given how many rounds were whole before it; it says whether every request of it
 * succeeded) until `wanted` rounds are whole or `retries` are spent (none runs when it is below
 * 0); returns the failed rounds.
 */
export async function runWholeRounds(wanted: number, round: (whole: number) => Promise<boolean>, retries = FAILED_ROUND_RETRIES): Promise<number> {
  let whole = 0;
  let failed = 0;
  while (whole < wanted && failed <= retries) {
    if (await round(whole)) whole++;
    else failed++;
  }
  return failed;
}
