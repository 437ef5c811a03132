/**
 * The decoder stack every architecture shares: embed, N blocks, final norm, output head.
 * The Llama family's block is built here (norm, attention, residual, norm, gated MLP,
 * residual); architectures with other blocks (Gemma) bring their own.
 */
import { MaskMemo, SequenceAttention, StepAttention, type Attention, type AttentionContext } from './attention.ts';
import { RunningBatch } from './batch-cache.ts';
import { KVCache } from './kv-cache.ts';
import { Embedding, GatedMLP, Linear, RMSNorm, softCap, type Activation, type Module } from './layers.ts';
import { mx, type MxArray } from './mx.ts';
import type { WeightStore } from './weights.ts';

/** A newcomer's next prompt tokens, to be prefilled into its own caches within a batch step. */
export interface PromptChunk {
  cache: KVCache[];
  tokens: number[];
}

export interface LanguageModel extends Module {
  readonly modelType: string;
  readonly contextLength: number;
  readonly vocabSize: number;
  /** One sequence's per-layer caches (sliding-window layers keep only their window). */
  newCache(): KVCache[];
  /** The KV state of the running batch, empty. */
  newBatch(): RunningBatch;
  /** Rows sharing positions over one cache: logits [batch, positions, vocab]; only the last position unless `allPositions`. */
  forward(ids: MxArray, cache: KVCache[], allPositions?: boolean): MxArray;
  /**
   * One forward pass for a whole scheduler step: `tokens[r]` continues the batch's row r, and each
   * chunk continues a newcomer's prompt in its own caches. Logits [batch.rows + chunks.length,
   * vocab]: each row's next token, then each chunk's last position.
   */
  step(batch: RunningBatch, tokens: number[], chunks: PromptChunk[]): MxArray;
}

/** The config.json keys every decoder architecture reads (transformers' names). */
export interface DecoderConfig {
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps?: number;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  attention_bias?: boolean;
}

/** One layer of a decoder stack. */
export interface DecoderBlock extends Module {
  /** The sliding window its attention keeps (see AttentionShape.window); null: full causal. */
  readonly window: number | null;
  forward(x: MxArray, attention: AttentionContext): MxArray;
}

class PreNormBlock implements DecoderBlock {
  constructor(
    private readonly inputNorm: RMSNorm,
    private readonly attention: Attention,
    private readonly postAttentionNorm: RMSNorm,
    private readonly mlp: GatedMLP,
  ) {}

  get window(): number | null {
    return this.attention.window;
  }

  forward(x: MxArray, context: AttentionContext): MxArray {
    const h = mx.add(x, this.attention.forward(this.inputNorm.forward(x), context));
    return mx.add(h, this.mlp.forward(this.postAttentionNorm.forward(h)));
  }

  parameters(): MxArray[] {
    return [this.inputNorm, this.attention, this.postAttentionNorm, this.mlp].flatMap((m) => m.parameters());
  }
}

export interface DecoderSpec {
  modelType: string;
  layers: number;
  hiddenSize: number;
  rmsNormEps: number;
  contextLength: number;
  tiedEmbeddings: boolean;
  /** The architecture's attention for the layer whose weights are under `prefix`. */
  attention: (store: WeightStore, prefix: string) => Attention;
  activation?: Activation;
}

/** What every decoder stack is made of; the blocks are the architecture's own. */
export interface StackParts {
  modelType: string;
  contextLength: number;
  embed: Embedding;
  /** Gemma multiplies embeddings by sqrt(hidden_size). */
  embedScale: number | null;
  blocks: DecoderBlock[];
  norm: RMSNorm;
  head: Linear | null;
  /** Gemma 2's cap * tanh(logits / cap). */
  finalSoftCap: number | null;
}

/** Drops what no architecture computes with, then loads the embedding and the (possibly tied) head. */
export function loadEmbeddings(store: WeightStore, tiedEmbeddings: boolean): { embed: Embedding; head: () => Linear | null } {
  store.discard((name) => name.includes('rotary_emb.inv_freq'));
  if (tiedEmbeddings) store.discard((name) => name.startsWith('lm_head.'));
  const embed = Embedding.load(store, 'model.embed_tokens');
  return { embed, head: () => (tiedEmbeddings ? null : Linear.load(store, 'lm_head')) };
}

export class DecoderStack implements LanguageModel {
  readonly modelType: string;
  readonly contextLength: number;

  constructor(private readonly parts: StackParts) {
    this.modelType = parts.modelType;
    this.contextLength = parts.contextLength;
  }

  /** The Llama-family pre-norm stack. */
  static load(store: WeightStore, spec: DecoderSpec): DecoderStack {
    const { embed, head } = loadEmbeddings(store, spec.tiedEmbeddings);
    const blocks = Array.from({ length: spec.layers }, (_, i) => {
      const prefix = `model.layers.${i}`;
      return new PreNormBlock(
        RMSNorm.load(store, `${prefix}.input_layernorm`, spec.rmsNormEps),
        spec.attention(store, `${prefix}.self_attn`),
        RMSNorm.load(store, `${prefix}.post_attention_layernorm`, spec.rmsNormEps),
        GatedMLP.load(store, `${prefix}.mlp`, spec.activation),
      );
    });
    const norm = RMSNorm.load(store, 'model.norm', spec.rmsNormEps);
    return new DecoderStack({ modelType: spec.modelType, contextLength: spec.contextLength, embed, embedScale: null, blocks, norm, head: head(), finalSoftCap: null });
  }

  get vocabSize(): number {
    return this.parts.embed.rows;
  }

  newCache(): KVCache[] {
    return this.parts.blocks.map((block) => new KVCache(block.window));
  }

  newBatch(): RunningBatch {
    return new RunningBatch(this.parts.blocks.map((block) => block.window));
  }

  forward(ids: MxArray, cache: KVCache[], allPositions = false): MxArray {
    const masks = new MaskMemo();
    const length = ids.shape[1] ?? 1;
    return this.run(ids, (i) => new SequenceAttention(cache[i] as KVCache, masks), allPositions ? null : [length - 1]);
  }

  step(batch: RunningBatch, tokens: number[], chunks: PromptChunk[]): MxArray {
    if (tokens.length !== batch.rows) throw new Error(`a batch step needs one token for each of the ${batch.rows} rows, got ${tokens.length}`);
    const rows = batch.rows;
    if (rows > 0) batch.prepareStep();
    const positions = rows > 0 ? batch.positions() : null;
    const masks = new MaskMemo();
    const inputs = [...tokens];
    const selected = tokens.map((_, row) => row);
    for (const chunk of chunks) {
      inputs.push(...chunk.tokens);
      selected.push(inputs.length - 1);
    }
    const logits = this.run(
      mx.array([inputs], mx.int32),
      (i) => new StepAttention(batch, i, positions, chunks.map((chunk) => ({ length: chunk.tokens.length, context: new SequenceAttention(chunk.cache[i] as KVCache, masks) }))),
      selected,
    );
    if (rows > 0) batch.advance();
    return logits.reshape([selected.length, this.vocabSize]);
  }

  /** Logits at the `selected` positions of the input sequence (all when null). */
  private run(ids: MxArray, contextFor: (layer: number) => AttentionContext, selected: number[] | null): MxArray {
    const { embed, embedScale, blocks, norm, head, finalSoftCap } = this.parts;
    let h = embed.forward(ids);
    if (embedScale !== null) h = mx.multiply(h, mx.array(embedScale, h.dtype));
    blocks.forEach((block, i) => {
      h = block.forward(h, contextFor(i));
    });
    if (selected) h = mx.take(h, mx.array(selected, mx.int32), 1);
    h = norm.forward(h);
    const logits = head ? head.forward(h) : embed.asLinear(h);
    return finalSoftCap === null ? logits : softCap(logits, finalSoftCap);
  }

  parameters(): MxArray[] {
    const { embed, blocks, norm, head } = this.parts;
    return [embed, ...blocks, norm, ...(head ? [head] : [])].flatMap((m) => m.parameters());
  }
}
