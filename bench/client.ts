/**
 * The bench's HTTP client: one keep-alive agent, and timed generation calls on each API shape.
 * A "chunk" is one streamed event carrying text; a chunk normally holds one token, more when
 * the detokenizer held back part of a character or several events arrived in one read.
 */
import http from 'node:http';
import type { MetricName, Recorders } from './histograms.ts';

export const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });

export interface HttpReply {
  status: number;
  body: string;
}

/** One HTTP exchange; `onData` sees each piece of the body as it arrives, with its arrival time. */
export function send(url: string, method: string, body?: unknown, onData?: (text: string, at: number) => void): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request(url, { method, agent, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} }, (response) => {
      response.setEncoding('utf8');
      let text = '';
      response.on('data', (piece: string) => {
        text += piece;
        onData?.(piece, performance.now());
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(payload);
  });
}

export async function getJson<T>(url: string, method = 'GET', body?: unknown): Promise<T> {
  const reply = await send(url, method, body);
  if (reply.status !== 200) throw new Error(`${method} ${url}: HTTP ${reply.status} ${reply.body.slice(0, 300)}`);
  return JSON.parse(reply.body) as T;
}

/** What one generation looked like from the client (or from the raw loop), in performance.now() ms. */
export interface RequestTiming {
  startedAt: number;
  /** Arrival of each chunk of generated text; empty when not streamed. */
  chunkTimes: number[];
  endedAt: number;
  promptTokens: number;
  completionTokens: number;
}

export type ApiRoute = 'openai-completions' | 'openai-chat' | 'ollama-generate' | 'ollama-chat';
export const ROUTE_PATHS: Record<ApiRoute, string> = {
  'openai-completions': '/v1/completions',
  'openai-chat': '/v1/chat/completions',
  'ollama-generate': '/api/generate',
  'ollama-chat': '/api/chat',
};

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
function requestBody(call: GenerationCall): Record<string, unknown> {
  const { route, model, prompt, maxTokens, stream } = call;
  const messages = [{ role: 'user', content: prompt }];
  if (route === 'openai-completions' || route === 'openai-chat') {
    return {
      model,
      ...(route === 'openai-chat' ? { messages } : { prompt }),
      max_tokens: maxTokens,
      temperature: 0,
      seed: 1,
      ignore_eos: true,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
    };
  }
  return { model, ...(route === 'ollama-chat' ? { messages } : { prompt }), stream, options: { num_predict: maxTokens, temperature: 0, seed: 1 } };
}

interface OpenAiPayload {
  choices?: { text?: string; delta?: { content?: string }; message?: { content?: string } }[];
  usage?: { prompt_tokens: number; completion_tokens: number };
  error?: { message: string };
}
interface OllamaPayload {
  response?: string;
  message?: { content?: string };
  done?: boolean;
  prompt_eval_count?: number;
  eval_count?: number;
  error?: string;
}

/** Splits a growing stream into complete records at `separator`, keeping the unfinished tail. */
function recordSplitter(separator: string, onRecord: (record: string, at: number) => void): (text: string, at: number) => void {
  let pending = '';
  return (text, at) => {
    pending += text;
    const records = pending.split(separator);
    pending = records.pop() ?? '';
    for (const record of records) if (record.trim()) onRecord(record.trim(), at);
  };
}

export async function timedGeneration(baseUrl: string, call: GenerationCall): Promise<RequestTiming> {
  const chunkTimes: number[] = [];
  let promptTokens = 0;
  let completionTokens = 0;
  const isOpenAi = call.route.startsWith('openai');
  const takeOpenAi = (payload: OpenAiPayload, at: number | null): void => {
    if (payload.error) throw new Error(payload.error.message);
    const choice = payload.choices?.[0];
    if (at !== null && (choice?.text || choice?.delta?.content)) chunkTimes.push(at);
    if (payload.usage) ({ prompt_tokens: promptTokens, completion_tokens: completionTokens } = payload.usage);
  };
  const takeOllama = (payload: OllamaPayload, at: number | null): void => {
    if (payload.error) throw new Error(payload.error);
    if (at !== null && (payload.response || payload.message?.content)) chunkTimes.push(at);
    if (payload.done) {
      promptTokens = payload.prompt_eval_count ?? 0;
      completionTokens = payload.eval_count ?? 0;
    }
  };
  let onData: ((text: string, at: number) => void) | undefined;
  if (call.stream && isOpenAi) {
    onData = recordSplitter('\n\n', (record, at) => {
      const data = record.replace(/^data: /, '');
      if (data !== '[DONE]') takeOpenAi(JSON.parse(data) as OpenAiPayload, at);
    });
  } else if (call.stream) {
    onData = recordSplitter('\n', (record, at) => takeOllama(JSON.parse(record) as OllamaPayload, at));
  }
  let streamError: unknown = null;
  const guarded = onData
    ? (text: string, at: number): void => {
        try {
          onData(text, at);
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
  if (!call.stream) {
    if (isOpenAi) takeOpenAi(JSON.parse(reply.body) as OpenAiPayload, null);
    else takeOllama(JSON.parse(reply.body) as OllamaPayload, null);
  }
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
