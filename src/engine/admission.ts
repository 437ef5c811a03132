/**
 * The engine's admission: a request reaches the worker only when one of --max-batch running
 * places is free and its KV cache fits in what the running ones leave of the KV budget. Until
 * then it waits here, on the main thread, in arrival order (a large request at the head is not
 * overtaken, so it cannot starve), holding no worker state: a client that leaves while waiting
 * costs the worker nothing.
 */
import { KV_ALLOCATION_TOKENS, describeKvBudget, type KvBudget } from '../models/footprint.ts';
import { ServeError } from '../../core/errors.ts';
import type { GenerationRequest } from '../../core/protocol.ts';

/** A running place and its share of the KV budget; released when the worker is done with the sequence. */
export interface Ticket {
  /** Bytes this request holds in the budget now. */
  readonly bytes: number;
  /** Corrects the share once the worker has counted the prompt's tokens. */
  resize(bytes: number): void;
  release(): void;
}

interface Waiter {
  bytes: number;
  admit: (ticket: Ticket) => void;
}

/**
 * Special tokens a tokenizer may add around a text (BOS, EOS, a template's markers). Every
 * other token of a byte-level BPE or byte-fallback SentencePiece vocabulary stands for at
 * least one byte of the text, so bytes plus these bound the count.
 */
const ADDED_TOKENS = 16;
/**
 * What a chat template may add around the messages' own text: role markers, default system
 * prompts, tool instructions. The messages are counted as their JSON (escapes only add bytes);
 * the exact count (the prompt tokenizer thread's, or the worker's for a GGUF model) replaces the estimate before any KV is allocated.
 */
const CHAT_TEMPLATE_TOKENS = 1024;

const utf8Bytes = (text: string): number => Buffer.byteLength(text, 'utf8');

/** The prompt's token count if it is known before tokenization, else an upper estimate, and which. */
export function promptTokenBound(request: GenerationRequest): { tokens: number; exact: boolean } {
  const { prompt } = request;
  switch (prompt.kind) {
    case 'tokens':
      return { tokens: prompt.ids.length, exact: true };
    case 'text':
      return { tokens: utf8Bytes(prompt.text) + ADDED_TOKENS, exact: false };
    case 'chat':
      return { tokens: utf8Bytes(JSON.stringify([prompt.messages, prompt.tools ?? null, prompt.templateArgs ?? null])) + CHAT_TEMPLATE_TOKENS, exact: false };
  }
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

export class KvNeed {
  constructor(
    private readonly budget: KvBudget,
    private readonly contextLength: number,
  ) {}

  private get budgetTokens(): number {
    return this.budget.bytesPerToken > 0 ? Math.floor(this.budget.budgetBytes / this.budget.bytesPerToken) : Number.POSITIVE_INFINITY;
  }

  /** Cache positions a sequence may fill: prompt plus new tokens (all the context when unbounded), capped at the context. */
  tokens(promptTokens: number, maxTokens: number | null): number {
    return Math.min(this.contextLength, promptTokens + (maxTokens ?? this.contextLength));
  }

  /** Bytes those positions hold, as the worker allocates them (whole growth steps). */
  bytes(tokens: number): number {
    return Math.ceil(tokens / KV_ALLOCATION_TOKENS) * KV_ALLOCATION_TOKENS * this.budget.bytesPerToken;
  }

  /**
   * The refusal (kv_budget_exceeded) of a request whose cache could not fit in the budget even alone; null when it
   * fits. `promptTokens` is null before the worker has counted them, which only a request with
   * no token limit can be judged without (it may fill the whole context).
   */
  refusal(promptTokens: number | null, maxTokens: number | null): ServeError | null {
    const tokens = this.tokens(promptTokens ?? 0, maxTokens);
    const bytes = this.bytes(tokens);
    if (bytes <= this.budget.budgetBytes) return null;
    const parts = maxTokens === null ? `the model's whole context, since it sets no limit on new tokens` : `${promptTokens} in the prompt, ${maxTokens} to generate`;
    return new ServeError('kv_budget_exceeded',
      `this request needs a KV cache of ${tokens} tokens (${parts}): ${mib(bytes)} at ${this.budget.bytesPerToken} bytes a token, but the KV budget is ${mib(this.budget.budgetBytes)} (${this.budgetTokens} tokens: ${describeKvBudget(this.budget)}); ask for fewer tokens or send a shorter prompt`,
    );
  }
}

export class Admission {
  private readonly queue: Waiter[] = [];
  private running = 0;
  private reserved = 0;
  private budgetBytes = 0;
  private maxRunning: number;

  constructor(private readonly maxBatch: number) {
    this.maxRunning = maxBatch;
  }

  /**
   * A newly loaded model's budget (a model changes only when nothing runs), and the sequences it
   * runs at once: --max-batch, or fewer where a llama.cpp context holds fewer.
   */
  setBudget(bytes: number, sequences = this.maxBatch): void {
    this.budgetBytes = bytes;
    this.maxRunning = Math.min(sequences, this.maxBatch);
    this.pump();
  }

  get reservedBytes(): number {
    return this.reserved;
  }

  /**
   * Resolves with a ticket once a running place is free and `bytes` fit (capped at the whole
   * budget: such a request runs alone); resolves null if `signal` aborts first.
   */
  enter(bytes: number, signal: AbortSignal): Promise<Ticket | null> {
    if (signal.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      const waiter: Waiter = { bytes: Math.min(bytes, this.budgetBytes), admit: resolve };
      const leave = (): void => {
        const index = this.queue.indexOf(waiter);
        if (index < 0) return;
        this.queue.splice(index, 1);
        resolve(null);
        this.pump();
      };
      signal.addEventListener('abort', leave, { once: true });
      waiter.admit = (ticket) => {
        signal.removeEventListener('abort', leave);
        resolve(ticket);
      };
      this.queue.push(waiter);
      this.pump();
    });
  }

  private pump(): void {
    for (let head = this.queue[0]; head && this.running < this.maxRunning && this.reserved + head.bytes <= this.budgetBytes; head = this.queue[0]) {
      this.queue.shift();
      this.running++;
      this.reserved += head.bytes;
      head.admit(this.ticket(head.bytes));
    }
  }

  private ticket(initial: number): Ticket {
    let bytes = initial;
    let released = false;
    const admission = this;
    return {
      get bytes() {
        return bytes;
      },
      resize(next: number) {
        if (released) return;
        admission.reserved += next - bytes;
        bytes = next;
        admission.pump();
      },
      release() {
        if (released) return;
        released = true;
        admission.running--;
        admission.reserved -= bytes;
        admission.pump();
      },
    };
  }
}
