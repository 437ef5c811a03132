/**
 * A model's tokenizer: encoding through Hugging Face's tokenizers.js (pure JS: its memory lives
 * in the worker's heap and goes with it on unload; the Rust bindings kept ~40 MB per load/unload
 * cycle), decoding through a table of each token's bytes, so a stream of tokens becomes a stream
 * of bytes that a streaming TextDecoder turns into text without ever splitting a character.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';
import type { ChatMessage } from '../core/protocol.ts';
import { ServeError } from '../core/errors.ts';
import { readJson } from '../core/model-folder.ts';

export interface TokenizerJson {
  model: { type: string; vocab: Record<string, number> | [string, number][] };
  added_tokens?: { id: number; content: string; special: boolean }[];
  decoder?: DecoderJson | null;
}

interface DecoderJson {
  type: string;
  decoders?: DecoderJson[];
  pattern?: { String?: string };
  content?: string;
  start?: number;
}

interface TokenizerConfig {
  chat_template?: string | { name: string; template: string }[];
  bos_token?: string | { content: string } | null;
  eos_token?: string | { content: string } | null;
  add_bos_token?: boolean;
}

/** GPT-2's reversible map from bytes to printable characters, inverted. */
function byteLevelDecodeTable(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const code = printable.includes(b) ? b : 256 + extra++;
    table.set(String.fromCodePoint(code), b);
  }
  return table;
}

function flattenDecoders(decoder: DecoderJson | null | undefined): DecoderJson[] {
  if (!decoder) return [];
  return decoder.type === 'Sequence' ? (decoder.decoders ?? []).flatMap(flattenDecoders) : [decoder];
}

/** How xgrammar reads a vocabulary's stored token strings as bytes. */
export type VocabularyKind = 'RAW' | 'BYTE_LEVEL' | 'BYTE_FALLBACK';

export interface GrammarVocabulary {
  /** Indexed by token id; special tokens are '' (never part of constrained text). */
  tokens: string[];
  kind: VocabularyKind;
  prependSpace: boolean;
}

const encoder = new TextEncoder();
const BYTE_FALLBACK = /^<0x([0-9A-Fa-f]{2})>$/;

/**
 * Every token's bytes in one buffer. A typed array per token would cost ~50 MB for 150k tokens,
 * and each would be its own small malloc'd backing store: 150k of them fragment the worker's
 * malloc arena so that ~25 MB of it stays resident after the worker (and the model) are gone.
 */
export interface TokenBytes {
  data: Uint8Array;
  offsets: Uint32Array;
  special: Set<number>;
  stripsLeadingSpace: boolean;
}

/** UTF-8 takes at most 3 bytes per UTF-16 code unit. */
const MAX_UTF8_PER_UNIT = 3;

export function tokenBytesTable(json: TokenizerJson): TokenBytes {
  const decoders = flattenDecoders(json.decoder);
  const byteLevel = decoders.some((d) => d.type === 'ByteLevel');
  const metaspace = decoders.some((d) => d.type === 'Metaspace' || (d.type === 'Replace' && d.pattern?.String === '▁'));
  const byteFallback = decoders.some((d) => d.type === 'ByteFallback');
  const stripsLeadingSpace = decoders.some((d) => (d.type === 'Strip' && (d.start ?? 0) > 0) || d.type === 'Metaspace');
  const byteTable = byteLevel ? byteLevelDecodeTable() : null;

  const tokens: string[] = [];
  const verbatim = new Set<number>();
  const special = new Set<number>();
  if (Array.isArray(json.model.vocab)) json.model.vocab.forEach(([token], id) => (tokens[id] = token));
  else for (const [token, id] of Object.entries(json.model.vocab)) tokens[id] = token;
  for (const added of json.added_tokens ?? []) {
    tokens[added.id] = added.content;
    verbatim.add(added.id);
    if (added.special) special.add(added.id);
  }

  let capacity = 0;
  for (const token of tokens) capacity += (token?.length ?? 0) * MAX_UTF8_PER_UNIT;
  const scratch = new Uint8Array(capacity);
  const utf8 = (text: string, at: number): number => encoder.encodeInto(text, scratch.subarray(at)).written;
  const write = (token: string, at: number): number => {
    if (byteTable) {
      let n = 0;
      for (const ch of token) {
        const b = byteTable.get(ch);
        if (b === undefined) return utf8(token, at);
        scratch[at + n++] = b;
      }
      return n;
    }
    const fallback = byteFallback ? BYTE_FALLBACK.exec(token) : null;
    if (fallback) {
      scratch[at] = parseInt(fallback[1] as string, 16);
      return 1;
    }
    return utf8(metaspace ? token.replaceAll('▁', ' ') : token, at);
  };

  const offsets = new Uint32Array(tokens.length + 1);
  let total = 0;
  for (let id = 0; id < tokens.length; id++) {
    offsets[id] = total;
    const token = tokens[id];
    if (token !== undefined) total += verbatim.has(id) ? utf8(token, total) : write(token, total);
  }
  offsets[tokens.length] = total;
  return { data: scratch.slice(0, total), offsets, special, stripsLeadingSpace };
}

function tokenContent(token: TokenizerConfig['bos_token']): string | null {
  if (!token) return null;
  return typeof token === 'string' ? token : token.content;
}

/** What streaming text needs of a vocabulary: each ordinary token's bytes. */
export interface TokenText {
  /** Undefined for special tokens, which never appear in generated text. */
  bytesOf(id: number): Uint8Array | undefined;
  /** A special token's text, for the ones a request keeps; undefined for ordinary tokens. */
  specialBytesOf(id: number): Uint8Array | undefined;
  readonly stripsLeadingSpace: boolean;
}

/** A vocabulary's token bytes alone, for an engine that tokenizes by itself (llama.cpp). */
export class TokenBytesTable implements TokenText {
  readonly stripsLeadingSpace: boolean;

  constructor(private readonly table: TokenBytes) {
    this.stripsLeadingSpace = table.stripsLeadingSpace;
  }

  get size(): number {
    return this.table.offsets.length - 1;
  }

  bytesOf(id: number): Uint8Array | undefined {
    const { data, offsets, special } = this.table;
    if (special.has(id) || id < 0 || id >= offsets.length - 1) return undefined;
    return data.subarray(offsets[id], offsets[id + 1]);
  }

  specialBytesOf(id: number): Uint8Array | undefined {
    const { data, offsets, special } = this.table;
    return special.has(id) ? data.subarray(offsets[id], offsets[id + 1]) : undefined;
  }
}

/** Renders a Hugging Face (Jinja) chat template the way every model's is rendered here. */
export function renderChatTemplate(
  template: Template | null,
  specials: { bosToken: string | null; eosToken: string | null },
  messages: ChatMessage[],
  tools?: unknown[],
  templateArgs: Record<string, unknown> = {},
  addGenerationPrompt = true,
): string {
  if (!template) {
    throw new ServeError('invalid_request', 'this model has no chat template; use the completions route with a plain prompt');
  }
  try {
    return template.render({
      ...templateArgs,
      messages,
      ...(tools && tools.length > 0 ? { tools } : {}),
      add_generation_prompt: addGenerationPrompt,
      bos_token: specials.bosToken ?? '',
      eos_token: specials.eosToken ?? '',
    });
  } catch (error) {
    throw new ServeError('invalid_request', `the chat template rejected these messages: ${(error as Error).message}`);
  }
}

export class ModelTokenizer implements TokenText {
  private readonly encoder: JsTokenizer;
  private readonly tokenText: TokenBytesTable;
  private readonly template: Template | null;
  readonly stripsLeadingSpace: boolean;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly vocabSize: number;

  constructor(private readonly dir: string) {
    const path = join(dir, 'tokenizer.json');
    if (!existsSync(path)) throw new ServeError('model_load_failed', `no tokenizer.json in ${dir}`);
    const json = readJson<TokenizerJson>(path, 'tokenizer.json');
    this.tokenText = new TokenBytesTable(tokenBytesTable(json));
    this.stripsLeadingSpace = this.tokenText.stripsLeadingSpace;
    this.vocabSize = this.tokenText.size;
    const configPath = join(dir, 'tokenizer_config.json');
    const config = existsSync(configPath) ? readJson<TokenizerConfig>(configPath, 'tokenizer_config.json') : {};
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    const source = Array.isArray(config.chat_template)
      ? (config.chat_template.find((t) => t.name === 'default') ?? config.chat_template[0])?.template
      : config.chat_template;
    this.template = source ? new Template(source) : null;
    try {
      this.encoder = new JsTokenizer(json, config);
    } catch (error) {
      throw new ServeError('model_load_failed', `unsupported tokenizer.json: ${(error as Error).message}`);
    }
  }

  encode(text: string, addSpecialTokens: boolean): number[] {
    return this.encoder.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  tokenId(token: string): number | null {
    return this.encoder.token_to_id(token) ?? null;
  }

  specialBytesOf(id: number): Uint8Array | undefined {
    return this.tokenText.specialBytesOf(id);
  }

  bytesOf(id: number): Uint8Array | undefined {
    return this.tokenText.bytesOf(id);
  }

  /**
   * The vocabulary as a grammar engine reads it, padded to `size` (the embedding's rows). Read
   * again from tokenizer.json when first needed, so the strings are not kept for every model.
   */
  grammarVocabulary(size: number): GrammarVocabulary {
    const json = readJson<TokenizerJson>(join(this.dir, 'tokenizer.json'), 'tokenizer.json');
    const decoders = flattenDecoders(json.decoder);
    const kind: VocabularyKind = decoders.some((d) => d.type === 'ByteLevel')
      ? 'BYTE_LEVEL'
      : decoders.some((d) => d.type === 'ByteFallback' || d.type === 'Metaspace' || (d.type === 'Replace' && d.pattern?.String === '▁'))
        ? 'BYTE_FALLBACK'
        : 'RAW';
    const tokens = new Array<string>(size).fill('');
    if (Array.isArray(json.model.vocab)) json.model.vocab.forEach(([token], id) => (tokens[id] = token));
    else for (const [token, id] of Object.entries(json.model.vocab)) tokens[id] = token;
    for (const added of json.added_tokens ?? []) tokens[added.id] = added.special ? '' : added.content;
    return { tokens: tokens.slice(0, size), kind, prependSpace: this.stripsLeadingSpace };
  }

  /** Special tokens are left out unless `skipSpecialTokens` is false (then they read as their text). */
  decode(ids: number[], skipSpecialTokens = true): string {
    const decoder = new TextDecoder();
    const bytes = (id: number): Uint8Array | undefined => this.bytesOf(id) ?? (skipSpecialTokens ? undefined : this.specialBytesOf(id));
    const text = ids.map((id) => decoder.decode(bytes(id) ?? new Uint8Array(), { stream: true })).join('') + decoder.decode();
    return this.stripsLeadingSpace && text.startsWith(' ') ? text.slice(1) : text;
  }

  applyChatTemplate(messages: ChatMessage[], tools?: unknown[], templateArgs: Record<string, unknown> = {}, addGenerationPrompt = true): string {
    return renderChatTemplate(this.template, this, messages, tools, templateArgs, addGenerationPrompt);
  }
}

/** Turns generated token ids into text, holding back incomplete UTF-8 sequences. */
export class StreamingDetokenizer {
  private readonly decoder = new TextDecoder();
  private first = true;

  /** `keptSpecial`: special tokens that read as their text instead of being left out. */
  constructor(
    private readonly tokenizer: TokenText,
    private readonly keptSpecial: ReadonlySet<number> = new Set(),
  ) {}

  push(id: number): string {
    const bytes = this.tokenizer.bytesOf(id) ?? (this.keptSpecial.has(id) ? this.tokenizer.specialBytesOf(id) : undefined);
    if (!bytes) return '';
    let text = this.decoder.decode(bytes, { stream: true });
    if (this.first && text.length > 0) {
      this.first = false;
      if (this.tokenizer.stripsLeadingSpace && text.startsWith(' ')) text = text.slice(1);
    }
    return text;
  }

  flush(): string {
    return this.decoder.decode();
  }
}
