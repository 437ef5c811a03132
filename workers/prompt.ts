/** A request's prompt as token ids, checked against the loaded model, for either engine. */
import type { ChatMessage, GenerationRequest, PromptInput } from '../core/protocol.ts';
import { ServeError } from '../core/errors.ts';
import type { Telemetry } from '../core/telemetry.ts';

/** What turning a prompt into ids needs of a model's tokenizer. */
export interface PromptTokenizer {
  encode(text: string, addSpecialTokens: boolean): number[];
  applyChatTemplate(messages: ChatMessage[], tools?: unknown[], templateArgs?: Record<string, unknown>): string;
}

export function promptIds(tokenizer: PromptTokenizer, prompt: PromptInput): number[] {
  switch (prompt.kind) {
    case 'tokens':
      return prompt.ids;
    case 'text':
      return tokenizer.encode(prompt.text, prompt.addSpecialTokens);
    case 'chat':
      return tokenizer.encode(tokenizer.applyChatTemplate(prompt.messages, prompt.tools, prompt.templateArgs), false);
  }
}

/** promptIds on the worker's own thread, its time counted in telemetry (what a long prompt stalls the running streams by). */
export function promptIdsInWorker(tokenizer: PromptTokenizer, prompt: PromptInput, telemetry: Telemetry): number[] {
  const started = performance.now();
  const ids = promptIds(tokenizer, prompt);
  if (prompt.kind !== 'tokens') telemetry.increment('workerTokenizeSeconds', (performance.now() - started) / 1000);
  return ids;
}

export function validatePrompt(ids: number[], request: GenerationRequest, limits: { contextLength: number; vocabSize: number }): void {
  const { contextLength, vocabSize } = limits;
  if (ids.length === 0) throw new ServeError('invalid_request', 'the prompt is empty after tokenization', 'prompt');
  const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
  if (bad !== undefined) throw new ServeError('invalid_request', `token id ${bad} is outside the vocabulary (0..${vocabSize - 1})`, 'prompt');
  const asked = typeof request.maxTokens === 'number' && !request.defaultLimit ? request.maxTokens : 1;
  const wanted = ids.length + asked;
  if (wanted > contextLength) {
    throw new ServeError('context_length_exceeded',
      `this model's maximum context length is ${contextLength} tokens, but the request needs ${wanted} (${ids.length} in the prompt, ${asked} to generate)`,
      'messages',
    );
  }
}
