/** One request's generation inside the worker: its cache, sampler, and the stream of its tokens. */
import type { MessagePort } from 'node:worker_threads';
import type { FinishReason, GenerationRequest } from '../core/protocol.ts';
import type { Telemetry } from '../core/telemetry.ts';
import type { LanguageModel } from './architectures/decoder.ts';
import type { KVCache } from './architectures/kv-cache.ts';
import type { MxArray } from './architectures/mx.ts';
import type { TokenConstraint } from './constraints/grammar.ts';
import type { PromptCacheHit } from './prompt-cache.ts';
import { Sampler } from './sampling.ts';
import { TokenStream } from './token-stream.ts';
import type { ModelTokenizer } from './tokenizer.ts';

export class Sequence {
  /** Its own per-layer caches while its prompt is prefilled; the running batch holds its state after that. */
  cache: KVCache[];
  private readonly sampler: Sampler;
  private readonly output: TokenStream;
  private prefilled: number;
  private lastToken = -1;

  constructor(
    readonly model: LanguageModel,
    tokenizer: ModelTokenizer,
    request: GenerationRequest,
    private readonly promptIds: number[],
    eosIds: Set<number>,
    readonly slot: number,
    port: MessagePort,
    telemetry: Telemetry,
    cached: PromptCacheHit | null,
    /** The output format this sequence's tokens must keep to; null: any text. */
    private readonly constraint: TokenConstraint | null = null,
  ) {
    this.cache = cached?.caches ?? model.newCache();
    const cachedTokens = cached?.length ?? 0;
    this.prefilled = cachedTokens;
    this.sampler = new Sampler(request.sampling);
    const keptSpecial = (request.keepSpecialTokens ?? []).map((token) => tokenizer.tokenId(token)).filter((id) => id !== null);
    this.output = new TokenStream({
      request,
      promptLength: promptIds.length,
      cachedTokens,
      isEos: (token) => eosIds.has(token),
      contextLength: model.contextLength,
      tokenText: tokenizer,
      keptSpecial: new Set(keptSpecial),
      constraint,
      port,
      telemetry,
    });
  }

  get finished(): FinishReason | null {
    return this.output.finished;
  }

  /** The prompt and what was generated after it: what this sequence's cache holds the state of. */
  get tokens(): number[] {
    return [...this.promptIds, ...this.output.history];
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
    this.output.promptDone();
    this.acceptLogits(logits);
  }

  /** Samples from this sequence's row of logits [vocab] and handles the token. */
  acceptLogits(row: MxArray): void {
    const { history, closing } = this.output;
    const constraint = this.constraint;
    this.accept(this.sampler.next(row, history.length > 0 ? history : this.promptIds, constraint ? (logits) => constraint.mask(logits, closing) : undefined));
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
    this.output.finish('cancelled');
  }

  private accept(token: number): void {
    this.lastToken = token;
    this.output.accept(token);
  }
}
