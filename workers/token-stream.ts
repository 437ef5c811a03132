/**
 * The engine-independent half of a generation: what happens to each token once an engine
 * (MLX or llama.cpp) has chosen it. End-of-sequence and stop strings, max_tokens and the
 * context limit, text streamed without splitting characters, usage counts and timings, and
 * the events on the request's port. Both engines send exactly the same events.
 */
import type { MessagePort } from 'node:worker_threads';
import type { FinishReason, GenerationRequest, StreamEvent } from '../core/protocol.ts';
import type { Telemetry } from '../core/telemetry.ts';
import { closingReserve, type TokenConstraint } from './constraints/grammar.ts';
import { StopMatcher } from './stop-matcher.ts';
import { StreamingDetokenizer, type TokenText } from './tokenizer.ts';

export interface TokenStreamOptions {
  request: GenerationRequest;
  promptLength: number;
  /** Prompt tokens whose state was reused instead of being prefilled. */
  cachedTokens: number;
  isEos: (token: number) => boolean;
  contextLength: number;
  tokenText: TokenText;
  /** Special tokens the request keeps in its text (request.keepSpecialTokens, as ids). */
  keptSpecial?: ReadonlySet<number>;
  /** The output format the tokens must keep to; the stream ends when it is complete. */
  constraint?: TokenConstraint | null;
  port: MessagePort;
  telemetry: Telemetry;
}

export class TokenStream {
  private readonly detokenizer: StreamingDetokenizer;
  private readonly stopMatcher: StopMatcher;
  private readonly startedAt = performance.now();
  private promptDoneAt = 0;
  /** Generated tokens, end-of-sequence excluded. */
  readonly history: number[] = [];
  private generated = 0;
  finished: FinishReason | null = null;

  constructor(private readonly options: TokenStreamOptions) {
    this.detokenizer = new StreamingDetokenizer(options.tokenText, options.keptSpecial);
    this.stopMatcher = new StopMatcher(options.request.stop);
    this.send({ type: 'started', promptTokens: options.promptLength, cachedTokens: options.cachedTokens });
  }

  /** Marks the end of the prompt's prefill, which the time to first token is measured against. */
  promptDone(): void {
    this.promptDoneAt = performance.now();
    this.options.telemetry.increment('promptTokens', this.options.promptLength - this.options.cachedTokens);
  }

  /** Whether the tokens left are few enough that a constraint should steer toward closing its output. */
  get closing(): boolean {
    const { request, promptLength, contextLength } = this.options;
    const room = contextLength - promptLength;
    const budget = typeof request.maxTokens === 'number' ? Math.min(request.maxTokens, room) : room;
    return budget - this.generated <= closingReserve(budget);
  }

  accept(token: number): void {
    const { request, telemetry, promptLength, contextLength, constraint } = this.options;
    this.generated++;
    telemetry.increment('tokensGenerated');
    constraint?.advance(token);
    if (!request.ignoreEos && this.options.isEos(token)) return this.finish('stop');
    this.history.push(token);
    const { emit, stopped } = this.stopMatcher.push(this.detokenizer.push(token));
    if (emit) this.send({ type: 'text', text: emit, tokens: this.generated });
    if (stopped) return this.finish('stop', false);
    if (constraint?.complete) return this.finish('stop');
    const atLimit = typeof request.maxTokens === 'number' && this.generated >= request.maxTokens;
    if (atLimit || promptLength + this.generated >= contextLength) this.finish('length');
  }

  finish(reason: FinishReason, flush = true): void {
    if (this.finished) return;
    this.finished = reason;
    this.options.constraint?.dispose();
    if (flush && reason !== 'cancelled') {
      const tail = this.stopMatcher.push(this.detokenizer.flush()).emit + this.stopMatcher.flush();
      if (tail) this.send({ type: 'text', text: tail, tokens: this.generated });
    }
    const now = performance.now();
    const promptDone = this.promptDoneAt || now;
    this.send({
      type: 'done',
      finishReason: reason,
      promptTokens: this.options.promptLength,
      cachedTokens: this.options.cachedTokens,
      completionTokens: this.generated,
      promptMs: promptDone - this.startedAt,
      decodeMs: now - promptDone,
    });
    this.options.port.close();
  }

  private send(event: StreamEvent): void {
    this.options.port.postMessage(event);
  }
}
