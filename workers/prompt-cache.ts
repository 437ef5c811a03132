/**
 * Keeps the KV state of finished sequences so a later request sharing a prefix with one (the
 * next turn of a chat, a common system prompt) prefills only what is new. Entries are copied
 * to their exact length (a live cache's buffers are padded to 256 positions). A sliding-window
 * layer keeps only its window, so an entry serves a prefix only where that window is still held. Bounded in bytes
 * and in entries (a lookup scans them all), least recently used first out.
 */
import type { KVCache } from './architectures/kv-cache.ts';

interface Entry {
  tokens: number[];
  caches: KVCache[];
  bytes: number;
}

export interface PromptCacheHit {
  length: number;
  caches: KVCache[];
}

function commonPrefix(a: number[], b: number[]): number {
  const limit = Math.min(a.length, b.length);
  let n = 0;
  while (n < limit && a[n] === b[n]) n++;
  return n;
}

const MAX_ENTRIES = 256;
/** Shorter shared prefixes (a chat template's opening) are not worth a copy of the state. */
const MIN_REUSE_TOKENS = 16;

export class PromptCache {
  private entries: Entry[] = [];
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  /** The longest cached prefix of `prompt`, leaving at least one token to prefill (its logits are needed). */
  lookup(prompt: number[]): PromptCacheHit | null {
    let best: { entry: Entry; length: number } | null = null;
    for (const entry of this.entries) {
      const length = Math.min(commonPrefix(entry.tokens, prompt), prompt.length - 1);
      const resumable = entry.caches.every((cache) => cache.canResumeAt(length));
      if (length >= MIN_REUSE_TOKENS && resumable && (!best || length > best.length)) best = { entry, length };
    }
    if (!best) return null;
    this.entries.splice(this.entries.indexOf(best.entry), 1);
    this.entries.push(best.entry);
    const length = best.length;
    return { length, caches: best.entry.caches.map((cache) => cache.prefix(length)) };
  }

  /** Keeps `caches`, which hold the KV state of `tokens` (their first cache.offset of them). */
  store(tokens: number[], live: KVCache[]): void {
    const covered = tokens.slice(0, live[0]?.offset ?? 0);
    if (covered.length < MIN_REUSE_TOKENS || this.maxBytes === 0) return;
    const caches = live.map((cache) => cache.compact());
    const bytes = caches.reduce((sum, cache) => sum + cache.bytes, 0);
    if (bytes > this.maxBytes) return;
    this.entries = this.entries.filter((entry) => {
      const redundant = commonPrefix(entry.tokens, covered) === entry.tokens.length;
      if (redundant) this.bytes -= entry.bytes;
      return !redundant;
    });
    this.entries.push({ tokens: covered, caches, bytes });
    this.bytes += bytes;
    while (this.bytes > this.maxBytes || this.entries.length > MAX_ENTRIES) {
      const evicted = this.entries.shift() as Entry;
      this.bytes -= evicted.bytes;
    }
  }
}
