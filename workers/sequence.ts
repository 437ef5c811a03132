/** One request's generation inside the worker: its cache, sampler, detokenizer and stop rules. */
import type { MessagePort } from 'node:worker_threads';
import type { FinishReason, GenerationRequest, StreamEvent } from '../src/engine/protocol.ts';
import type { Telemetry } from '../src/telemetry/layout.ts';
import type { LanguageModel } from './models/decoder.ts';
import type { KVCache } from './models/kv-cache.ts';
import type { MxArray } from './models/mx.ts';
import { closingReserve, type TokenConstraint } from './constraints/grammar.ts';
import type { PromptCacheHit } from './prompt-cache.ts';
import { Sampler } from './sampling.ts';
import { StopMatcher } from './stop-matcher.ts';
import { StreamingDetokenizer, type ModelTokenizer } from './tokenizer.ts';

export class Sequence {
  /** Its own per-layer caches while its prompt is prefilled; the running batch holds its state after that. */
  cache: KVCache[];
  private readonly sampler: Sampler;
  private readonly detokenizer: StreamingDetokenizer;
  private readonly stopMatcher: StopMatcher;
  private readonly history: number[] = [];
  private readonly startedAt = performance.now();
  private promptDoneAt = 0;
  private prefilled: number;
  /** Prompt tokens whose KV state came from the prompt cache. */
  private readonly cachedTokens: number;
  private lastToken = -1;
  private generated = 0;
  finished: FinishReason | null = null;

  constructor(
    readonly model: LanguageModel,
    tokenizer: ModelTokenizer,
    private readonly request: GenerationRequest,
    private readonly promptIds: number[],
    private readonly eosIds: Set<number>,
    readonly slot: number,
    private readonly port: MessagePort,
    private readonly telemetry: Telemetry,
    cached: PromptCacheHit | null,
    /** The output format this sequence's tokens must keep to; null: any text. */
    private readonly constraint: TokenConstraint | null = null,
  ) {
    this.cache = cached?.caches ?? model.newCache();
    this.cachedTokens = cached?.length ?? 0;
    this.prefilled = this.cachedTokens;
    this.sampler = new Sampler(request.sampling);
    const keptSpecial = (request.keepSpecialTokens ?? []).map((token) => tokenizer.tokenId(token)).filter((id) => id !== null);
    this.detokenizer = new StreamingDetokenizer(tokenizer, new Set(keptSpecial));
    this.stopMatcher = new StopMatcher(request.stop);
    this.send({ type: 'started', promptTokens: promptIds.length, cachedTokens: this.cachedTokens });
  }

  /** The prompt and what was generated after it: what this sequence's cache holds the state of. */
  get tokens(): number[] {
    return [...this.promptIds, ...this.history];
  }

  get inPrefill(): boolean {
    return this.prefilled < this.promptIds.length;
  }

  /** The token the next decode step feeds in. */
  get nextToken(): number {
    return this.lastToken;
  }

  /** The next `size` prompt tokens to prefill. */
  nextChunk(size: number): number[] {
    return this.promptIds.slice(this.prefilled, this.prefilled + size);
  }

  /**
   * Records that `length` more prompt tokens are in the cache; after the last chunk, samples the
   * first generated token from `logits` (the last prompt position's, [vocab]).
   */
  advancePrefill(length: number, logits: MxArray): void {
    this.prefilled += length;
    if (this.inPrefill) return;
    this.promptDoneAt = performance.now();
    this.telemetry.increment('promptTokens', this.promptIds.length - this.cachedTokens);
    this.acceptLogits(logits);
  }

  /** Samples from this sequence's row of logits [vocab] and handles the token. */
  acceptLogits(row: MxArray): void {
    const constraint = this.constraint;
    const { maxTokens } = this.request;
    const room = this.model.contextLength - this.promptIds.length;
    const budget = typeof maxTokens === 'number' ? Math.min(maxTokens, room) : room;
    const closing = budget - this.generated <= closingReserve(budget);
    this.accept(this.sampler.next(row, this.history.length > 0 ? this.history : this.promptIds, constraint ? (logits) => constraint.mask(logits, closing) : undefined));
  }

  /** Whether its next token is its row's argmax (see Sampler.plainGreedy), which a batch computes for all rows at once. */
  get takesArgmax(): boolean {
    return this.constraint === null && this.sampler.plainGreedy;
  }

  /** Handles its row's argmax, when it takesArgmax. */
  acceptArgmax(token: number): void {
    this.accept(token);
  }

  cancel(): void {
    this.finish('cancelled');
  }

  private accept(token: number): void {
    this.generated++;
    this.telemetry.increment('tokensGenerated');
    this.constraint?.advance(token);
    if (!this.request.ignoreEos && this.eosIds.has(token)) return this.finish('stop');
    this.history.push(token);
    this.lastToken = token;
    const { emit, stopped } = this.stopMatcher.push(this.detokenizer.push(token));
    if (emit) this.send({ type: 'text', text: emit, tokens: this.generated });
    if (stopped) return this.finish('stop', false);
    if (this.constraint?.complete) return this.finish('stop');
    const { maxTokens } = this.request;
    const atLimit = typeof maxTokens === 'number' && this.generated >= maxTokens;
    const contextFull = this.promptIds.length + this.generated >= this.model.contextLength;
    if (atLimit || contextFull) this.finish('length');
  }

  private finish(reason: FinishReason, flush = true): void {
    if (this.finished) return;
    this.finished = reason;
    this.constraint?.dispose();
    if (flush && reason !== 'cancelled') {
      const tail = this.stopMatcher.push(this.detokenizer.flush()).emit + this.stopMatcher.flush();
      if (tail) this.send({ type: 'text', text: tail, tokens: this.generated });
    }
    const now = performance.now();
    const promptDone = this.promptDoneAt || now;
    this.send({
      type: 'done',
      finishReason: reason,
      promptTokens: this.promptIds.length,
      cachedTokens: this.cachedTokens,
      completionTokens: this.generated,
      promptMs: promptDone - this.startedAt,
      decodeMs: now - promptDone,
    });
    this.port.close();
  }

  private send(event: StreamEvent): void {
    this.port.postMessage(event);
  }
}
