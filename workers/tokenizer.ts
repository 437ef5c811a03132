/**
 * A model's tokenizer: encoding through Hugging Face's Rust `tokenizers`, decoding through a
 * table of each token's bytes, so a stream of tokens becomes a stream of bytes that a streaming
 * TextDecoder turns into text without ever splitting a multi-byte character.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import type { ChatMessage } from '../src/engine/protocol.ts';
import { ServeError } from '../src/errors.ts';
import { readJson } from './models/loader.ts';

interface TokenizerJson {
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

const encoder = new TextEncoder();
const BYTE_FALLBACK = /^<0x([0-9A-Fa-f]{2})>$/;

function tokenBytesTable(json: TokenizerJson): { bytes: Uint8Array[]; special: Set<number>; stripsLeadingSpace: boolean } {
  const decoders = flattenDecoders(json.decoder);
  const byteLevel = decoders.some((d) => d.type === 'ByteLevel');
  const metaspace = decoders.some((d) => d.type === 'Metaspace' || (d.type === 'Replace' && d.pattern?.String === '▁'));
  const byteFallback = decoders.some((d) => d.type === 'ByteFallback');
  const stripsLeadingSpace = decoders.some((d) => (d.type === 'Strip' && (d.start ?? 0) > 0) || (d.type === 'Metaspace'));
  const byteTable = byteLevel ? byteLevelDecodeTable() : null;

  const entries: [string, number][] = Array.isArray(json.model.vocab) ? json.model.vocab.map(([t], i) => [t, i]) : Object.entries(json.model.vocab);
  const bytes: Uint8Array[] = [];
  const toBytes = (token: string): Uint8Array => {
    if (byteTable) {
      const out = new Uint8Array(token.length);
      let n = 0;
      for (const ch of token) {
        const b = byteTable.get(ch);
        if (b === undefined) return encoder.encode(token);
        out[n++] = b;
      }
      return out.subarray(0, n);
    }
    const fallback = byteFallback ? BYTE_FALLBACK.exec(token) : null;
    if (fallback) return Uint8Array.of(parseInt(fallback[1] as string, 16));
    return encoder.encode(metaspace ? token.replaceAll('▁', ' ') : token);
  };
  for (const [token, id] of entries) bytes[id] = toBytes(token);
  const special = new Set<number>();
  for (const added of json.added_tokens ?? []) {
    bytes[added.id] = encoder.encode(added.content);
    if (added.special) special.add(added.id);
  }
  return { bytes, special, stripsLeadingSpace };
}

function tokenContent(token: TokenizerConfig['bos_token']): string | null {
  if (!token) return null;
  return typeof token === 'string' ? token : token.content;
}

export class ModelTokenizer {
  private readonly rust: RustTokenizer;
  private readonly tokenBytes: Uint8Array[];
  private readonly special: Set<number>;
  private readonly template: Template | null;
  readonly stripsLeadingSpace: boolean;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly vocabSize: number;

  constructor(dir: string) {
    const path = join(dir, 'tokenizer.json');
    if (!existsSync(path)) throw new ServeError(422, 'model_load_failed', `no tokenizer.json in ${dir}`);
    this.rust = RustTokenizer.fromFile(path);
    const table = tokenBytesTable(readJson<TokenizerJson>(path, 'tokenizer.json'));
    this.tokenBytes = table.bytes;
    this.special = table.special;
    this.stripsLeadingSpace = table.stripsLeadingSpace;
    this.vocabSize = table.bytes.length;
    const configPath = join(dir, 'tokenizer_config.json');
    const config = existsSync(configPath) ? readJson<TokenizerConfig>(configPath, 'tokenizer_config.json') : {};
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    const source = Array.isArray(config.chat_template)
      ? (config.chat_template.find((t) => t.name === 'default') ?? config.chat_template[0])?.template
      : config.chat_template;
    this.template = source ? new Template(source) : null;
  }

  async encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    const encoding = await this.rust.encode(text, null, { addSpecialTokens });
    return encoding.getIds();
  }

  tokenId(token: string): number | null {
    return this.rust.tokenToId(token);
  }

  bytesOf(id: number): Uint8Array | undefined {
    return this.special.has(id) ? undefined : this.tokenBytes[id];
  }

  decode(ids: number[]): string {
    const decoder = new TextDecoder();
    const text = ids.map((id) => decoder.decode(this.bytesOf(id) ?? new Uint8Array(), { stream: true })).join('') + decoder.decode();
    return this.stripsLeadingSpace && text.startsWith(' ') ? text.slice(1) : text;
  }

  applyChatTemplate(messages: ChatMessage[], tools: unknown[] | undefined): string {
    if (!this.template) {
      throw new ServeError(400, 'invalid_request', 'this model has no chat template; use the completions route with a plain prompt');
    }
    try {
      return this.template.render({
        messages,
        ...(tools && tools.length > 0 ? { tools } : {}),
        add_generation_prompt: true,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
      });
    } catch (error) {
      throw new ServeError(400, 'invalid_request', `the chat template rejected these messages: ${(error as Error).message}`);
    }
  }
}

/** Turns generated token ids into text, holding back incomplete UTF-8 sequences. */
export class StreamingDetokenizer {
  private readonly decoder = new TextDecoder();
  private first = true;

  constructor(private readonly tokenizer: ModelTokenizer) {}

  push(id: number): string {
    const bytes = this.tokenizer.bytesOf(id);
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
