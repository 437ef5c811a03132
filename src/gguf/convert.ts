/**
 * Hugging Face model folder (config.json, safetensors, tokenizer.json) -> GGUF, for the
 * architectures llama.cpp and our MLX engine share: qwen3, qwen2, llama and mistral. Names and
 * keys follow llama.cpp's own convert_hf_to_gguf.py, so the file loads as llama.cpp's would.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServeError } from '../../core/errors.ts';
import { weightFiles } from '../../core/model-folder.ts';
import { FILE_TYPE_OF, fitsType, writeGguf, writeGgufSplit, type MetadataEntry, type TensorInput, type TensorType } from '../../core/gguf/format.ts';

interface HfConfig {
  model_type: string;
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps: number;
  rope_theta?: number;
  rope_scaling?: unknown;
  sliding_window?: number | null;
  use_sliding_window?: boolean;
  max_position_embeddings: number;
  tie_word_embeddings?: boolean;
  bos_token_id?: number | number[];
  eos_token_id?: number | number[];
}

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges?: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special: boolean }[];
}

interface TokenizerConfig {
  chat_template?: string;
  add_bos_token?: boolean;
  eos_token?: string | { content: string } | null;
  pad_token?: string | { content: string } | null;
}

/** llama.cpp's llama_token_type. */
const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

/** HF names -> llama.cpp names, per layer; `null` marks q and k, which llama-style rope reorders. */
const LAYER_TENSORS: [hf: string, gguf: string][] = [
  ['input_layernorm.weight', 'attn_norm.weight'],
  ['post_attention_layernorm.weight', 'ffn_norm.weight'],
  ['self_attn.q_proj.weight', 'attn_q.weight'],
  ['self_attn.k_proj.weight', 'attn_k.weight'],
  ['self_attn.v_proj.weight', 'attn_v.weight'],
  ['self_attn.o_proj.weight', 'attn_output.weight'],
  ['self_attn.q_proj.bias', 'attn_q.bias'],
  ['self_attn.k_proj.bias', 'attn_k.bias'],
  ['self_attn.v_proj.bias', 'attn_v.bias'],
  ['self_attn.q_norm.weight', 'attn_q_norm.weight'],
  ['self_attn.k_norm.weight', 'attn_k_norm.weight'],
  ['mlp.gate_proj.weight', 'ffn_gate.weight'],
  ['mlp.up_proj.weight', 'ffn_up.weight'],
  ['mlp.down_proj.weight', 'ffn_down.weight'],
];

/** HF model_type -> llama.cpp architecture, and whether q/k rows need llama's rope reordering. */
const ARCHITECTURES: Record<string, { arch: string; permuteQK: boolean }> = {
  qwen3: { arch: 'qwen3', permuteQK: false },
  qwen2: { arch: 'qwen2', permuteQK: false },
  llama: { arch: 'llama', permuteQK: true },
  mistral: { arch: 'llama', permuteQK: true },
};

export const convertibleArchitectures = (): string[] => Object.keys(ARCHITECTURES);

interface Tensor {
  shape: number[];
  data: Float32Array;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (mantissa / 1024);
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + mantissa / 1024);
}

function readSafetensors(file: string, into: Map<string, Tensor>): void {
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.toString('utf8', 8, 8 + headerLength)) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + headerLength;
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = info.data_offsets;
    const raw = bytes.subarray(base + start, base + end);
    const count = info.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      switch (info.dtype) {
        case 'F32':
          data[i] = raw.readFloatLE(i * 4);
          break;
        case 'F16':
          data[i] = halfToFloat(raw.readUInt16LE(i * 2));
          break;
        case 'BF16':
          data[i] = new Float32Array(new Uint32Array([raw.readUInt16LE(i * 2) << 16]).buffer)[0] as number;
          break;
        default:
          throw new ServeError('unsupported_model', `tensor ${name} is ${info.dtype}; only F32, F16 and BF16 weights convert to GGUF`);
      }
    }
    into.set(name, { shape: info.shape, data });
  }
}

/**
 * llama.cpp's llama architecture applies rope to adjacent pairs of a head's dimensions, HF's to
 * its two halves: within each head, rows (h, half, pair) are reordered to (h, pair, half).
 */
function permuteForRope(tensor: Tensor, heads: number): Tensor {
  const [rows = 0, cols = 1] = tensor.shape;
  const half = rows / heads / 2;
  const out = new Float32Array(tensor.data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = h * 2 * half + j * half + i;
        const to = h * 2 * half + i * 2 + j;
        out.set(tensor.data.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return { shape: tensor.shape, data: out };
}

function tokenText(token: TokenizerConfig['eos_token']): string | null {
  if (!token) return null;
  return typeof token === 'string' ? token : token.content;
}

const firstId = (value: number | number[] | undefined): number | undefined => (Array.isArray(value) ? value[0] : value);

/**
 * The byte-level BPE vocabulary as llama.cpp's gpt2 tokenizer reads it, sized to the model's
 * embedding: padded with unused tokens when the embedding is larger (as HF checkpoints often
 * are), cut when it is smaller (the parity fixtures pair a real tokenizer with a tiny embedding).
 */
function vocabulary(tokenizerDir: string, config: HfConfig): [string, MetadataEntry][] {
  const json = JSON.parse(readFileSync(join(tokenizerDir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  const configPath = join(tokenizerDir, 'tokenizer_config.json');
  const tokenizerConfig = existsSync(configPath) ? (JSON.parse(readFileSync(configPath, 'utf8')) as TokenizerConfig) : {};
  if (json.model.type !== 'BPE') throw new ServeError('unsupported_model', `tokenizer model ${json.model.type} does not convert; only byte-level BPE does`);
  const tokens: string[] = Array.from({ length: config.vocab_size }, (_, i) => `[PAD${i}]`);
  const types: number[] = new Array<number>(config.vocab_size).fill(TOKEN_TYPE.unused);
  const ids = new Map<string, number>();
  const place = (text: string, id: number, type: number): void => {
    if (id >= config.vocab_size) return;
    tokens[id] = text;
    types[id] = type;
    ids.set(text, id);
  };
  for (const [text, id] of Object.entries(json.model.vocab)) place(text, id, TOKEN_TYPE.normal);
  // As convert_hf_to_gguf.py: an added token written like <|...|> is a control token even when
  // tokenizer.json does not flag it special, so llama.cpp never treats it as text.
  const looksSpecial = (text: string): boolean => text.startsWith('<|') && text.endsWith('|>');
  for (const added of json.added_tokens ?? []) place(added.content, added.id, added.special || looksSpecial(added.content) ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined);
  const merges = (json.model.merges ?? [])
    .map((merge) => (typeof merge === 'string' ? merge.split(' ') : merge))
    .filter(([a = '', b = '']) => ids.has(a) && ids.has(b) && ids.has(a + b))
    .map((pair) => pair.join(' '));
  const metadata: [string, MetadataEntry][] = [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: 'qwen2' }],
    ['tokenizer.ggml.tokens', { type: 'strings', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32s', value: types }],
    ['tokenizer.ggml.merges', { type: 'strings', value: merges }],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: tokenizerConfig.add_bos_token ?? false }],
  ];
  const special = (key: string, id: number | undefined): void => {
    if (id !== undefined && id < config.vocab_size) metadata.push([`tokenizer.ggml.${key}_token_id`, { type: 'u32', value: id }]);
  };
  const byText = (text: string | null): number | undefined => (text === null ? undefined : ids.get(text));
  special('bos', firstId(config.bos_token_id));
  special('eos', byText(tokenText(tokenizerConfig.eos_token)) ?? firstId(config.eos_token_id));
  special('padding', byText(tokenText(tokenizerConfig.pad_token)));
  if (tokenizerConfig.chat_template) metadata.push(['tokenizer.chat_template', { type: 'string', value: tokenizerConfig.chat_template }]);
  return metadata;
}

export interface ConvertOptions {
  /** How 2-D weight matrices are stored; norms and biases stay F32 (as llama-quantize leaves them). */
  type: TensorType;
  /** Where tokenizer.json (and tokenizer_config.json) are; the model folder by default. */
  tokenizerDir?: string;
  name?: string;
  /** Split into this many files, named from `outPath` as llama.cpp names a split model's parts. */
  parts?: number;
}

/** Writes the model in `modelDir` as a GGUF file at `outPath` (or split into `options.parts` files); returns the files written. */
export function convertToGguf(modelDir: string, outPath: string, options: ConvertOptions): string[] {
  const config = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as HfConfig;
  const target = ARCHITECTURES[config.model_type];
  if (!target) throw new ServeError('unsupported_model', `model type ${config.model_type} does not convert to GGUF; these do: ${convertibleArchitectures().join(', ')}`);
  if (config.rope_scaling) throw new ServeError('unsupported_model', 'models with rope scaling do not convert to GGUF yet');
  // llama.cpp's llama architecture has no sliding window: Mistral's would silently change the model.
  const slidingWindow = config.model_type === 'qwen2' ? config.use_sliding_window === true : typeof config.sliding_window === 'number';
  if (slidingWindow) throw new ServeError('unsupported_model', 'models with sliding-window attention do not convert to GGUF');
  const source = new Map<string, Tensor>();
  for (const file of weightFiles(modelDir)) readSafetensors(file, source);
  const heads = config.num_attention_heads;
  const kvHeads = config.num_key_value_heads ?? heads;
  const headDim = config.head_dim ?? config.hidden_size / heads;

  const tensors: TensorInput[] = [];
  const add = (gguf: string, tensor: Tensor | undefined): void => {
    if (!tensor) return;
    const type = tensor.shape.length === 2 && fitsType(tensor.shape, options.type) ? options.type : 'F32';
    tensors.push({ name: gguf, shape: tensor.shape, data: tensor.data, type });
  };
  add('token_embd.weight', source.get('model.embed_tokens.weight'));
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    for (const [hf, gguf] of LAYER_TENSORS) {
      let tensor = source.get(`model.layers.${layer}.${hf}`);
      if (tensor && target.permuteQK && gguf === 'attn_q.weight') tensor = permuteForRope(tensor, heads);
      if (tensor && target.permuteQK && gguf === 'attn_k.weight') tensor = permuteForRope(tensor, kvHeads);
      add(`blk.${layer}.${gguf}`, tensor);
    }
  }
  add('output_norm.weight', source.get('model.norm.weight'));
  if (!config.tie_word_embeddings) add('output.weight', source.get('lm_head.weight'));

  const arch = target.arch;
  const u32 = (value: number): MetadataEntry => ({ type: 'u32', value });
  const metadata: [string, MetadataEntry][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: options.name ?? config.model_type }],
    ['general.file_type', u32(FILE_TYPE_OF[options.type])],
    [`${arch}.context_length`, u32(config.max_position_embeddings)],
    [`${arch}.embedding_length`, u32(config.hidden_size)],
    [`${arch}.block_count`, u32(config.num_hidden_layers)],
    [`${arch}.feed_forward_length`, u32(config.intermediate_size)],
    [`${arch}.attention.head_count`, u32(heads)],
    [`${arch}.attention.head_count_kv`, u32(kvHeads)],
    [`${arch}.attention.key_length`, u32(headDim)],
    [`${arch}.attention.value_length`, u32(headDim)],
    [`${arch}.rope.dimension_count`, u32(headDim)],
    [`${arch}.rope.freq_base`, { type: 'f32', value: config.rope_theta ?? 10000 }],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: config.rms_norm_eps }],
    [`${arch}.vocab_size`, u32(config.vocab_size)],
    ...vocabulary(options.tokenizerDir ?? modelDir, config),
  ];
  if (!options.parts || options.parts === 1) {
    writeGguf(outPath, metadata, tensors);
    return [outPath];
  }
  return writeGgufSplit(outPath.replace(/\.gguf$/i, ''), metadata, tensors, options.parts);
}
