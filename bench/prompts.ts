/**
 * The bench's prompts. The server keeps a prompt cache (KV state reused for a shared token
 * prefix), so each request gets a distinct leading number: otherwise every repeat after the
 * first would skip its prefill and TTFT would measure the cache, not the model.
 */
const WORDS = 'the quiet harbor town woke slowly as fishing boats returned with silver nets while gulls argued over scraps and an old painter set up her easel near the lighthouse to catch the morning light'.split(' ');

/** A deterministic English-like prompt of `words` words. */
export function promptOfWords(words: number): string {
  return Array.from({ length: words }, (_, i) => WORDS[i % WORDS.length]).join(' ');
}

let issued = 0;

/** `text` behind a number no earlier prompt of this process started with. */
export const distinctPrompt = (text: string): string => `${++issued}: ${text}`;
