/**
 * Constrained decoding: before each token is drawn, every token that could not continue the
 * output as a valid prefix of its required format is masked out of the logits.
 *
 * The grammar work is xgrammar's (npm `@mlc-ai/web-xgrammar`, the engine behind vLLM's, SGLang's
 * and WebLLM's structured output): it compiles a JSON schema (or fixed text around one) against
 * the tokenizer's vocabulary once, sorting each grammar position's tokens into always-allowed,
 * always-refused and context-dependent, so that a step walks only the few uncertain ones through
 * its pushdown automaton and returns a bitmask over the whole vocabulary.
 */
import type { JsonSchema, OutputFormat } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';
import { mx, type MxArray } from '../architectures/mx.ts';
import type { ModelTokenizer } from '../tokenizer.ts';
import { xgrammar, type CompiledGrammar, type GrammarCompiler, type GrammarMatcher, type StructuralTagFormat } from './xgrammar.ts';

/** JSON as the compiler writes it: one line, with a space after `,` and `:` as json.dumps does. */
const COMPACT = { anyWhitespace: false, indent: -1, separators: [', ', ': '] as [string, string] };
/** Formats compiled per model; a client usually repeats the same few. */
const COMPILED_FORMATS = 32;
const QUOTE = 0x22;
const CLOSING_BYTES = new Set([QUOTE, 0x5d, 0x7d]); // " ] }

/**
 * Tokens made only of closing quotes, brackets and braces. Inside a string a quote closes it and
 * a bracket is only text; outside, a quote would open a new string and a bracket closes.
 */
interface Closers {
  quotes: number[];
  /** With the stop tokens, which end a finished answer. */
  brackets: number[];
  /** Each token's length in bytes: where the grammar dictates the text, the longest token spells it fastest. */
  lengths: Uint16Array;
}

/**
 * The last tokens of a budget (max_tokens, or what the context has left) in which decoding
 * prefers tokens that close what is open, so the JSON can end before the budget does.
 */
export function closingReserve(budget: number): number {
  return Math.min(256, Math.max(64, Math.floor(budget / 2)));
}

async function grammarText(schema: JsonSchema, closed: boolean): Promise<string> {
  const grammar = await xgrammar().Grammar.fromJSONSchema(JSON.stringify(schema), COMPACT.anyWhitespace, COMPACT.indent, COMPACT.separators, closed);
  const text = grammar.toString();
  grammar.dispose();
  return text;
}

async function structuralFormat(format: OutputFormat): Promise<StructuralTagFormat> {
  switch (format.type) {
    case 'json':
      // The structural tag's own JSON element allows any whitespace, which a weak model fills
      // forever; the schema's compact grammar does not.
      return { type: 'grammar', grammar: await grammarText(format.schema, format.closed) };
    case 'text':
      return { type: 'const_string', value: format.value };
    case 'sequence':
      return { type: 'sequence', elements: await Promise.all(format.elements.map(structuralFormat)) };
    case 'or':
      return { type: 'or', elements: await Promise.all(format.elements.map(structuralFormat)) };
  }
}

function invalidFormat(error: unknown): ServeError {
  const message = error instanceof Error ? error.message : String(error);
  return new ServeError('invalid_request', `the output format could not be compiled into a grammar: ${message}`, 'response_format');
}

/** One loaded model's grammar compiler: built on the first constrained request, then kept. */
export class GrammarConstraints {
  private compiler: Promise<GrammarCompiler> | null = null;
  private readonly compiled = new Map<string, Promise<CompiledGrammar>>();
  private closers: Closers | null = null;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly vocabSize: number,
    private readonly stopIds: ReadonlySet<number>,
  ) {}

  /** A fresh matcher for one sequence. */
  async constraint(format: OutputFormat): Promise<TokenConstraint> {
    const compiled = await this.compile(format);
    this.closers ??= this.closingTokens();
    return new TokenConstraint(await xgrammar().GrammarMatcher.createGrammarMatcher(compiled), this.vocabSize, this.closers);
  }

  private closingTokens(): Closers {
    const closers: Closers = { quotes: [], brackets: [...this.stopIds], lengths: new Uint16Array(this.vocabSize) };
    for (let id = 0; id < this.vocabSize; id++) {
      const bytes = this.tokenizer.bytesOf(id);
      closers.lengths[id] = bytes?.length ?? 0;
      if (!bytes || bytes.length === 0 || !bytes.every((b) => CLOSING_BYTES.has(b))) continue;
      (bytes.includes(QUOTE) ? closers.quotes : closers.brackets).push(id);
    }
    return closers;
  }

  private compile(format: OutputFormat): Promise<CompiledGrammar> {
    const key = JSON.stringify(format);
    const cached = this.compiled.get(key);
    if (cached) {
      this.compiled.delete(key);
      this.compiled.set(key, cached);
      return cached;
    }
    const compiling = this.compileNew(format);
    compiling.catch(() => this.compiled.delete(key));
    this.compiled.set(key, compiling);
    for (const [oldest, grammar] of this.compiled) {
      if (this.compiled.size <= COMPILED_FORMATS) break;
      this.compiled.delete(oldest);
      void grammar.then((g) => g.dispose(), () => undefined);
    }
    return compiling;
  }

  private async compileNew(format: OutputFormat): Promise<CompiledGrammar> {
    const compiler = await this.grammarCompiler();
    try {
      if (format.type === 'json') {
        const { anyWhitespace, indent, separators } = COMPACT;
        return await compiler.compileJSONSchema(JSON.stringify(format.schema), anyWhitespace, indent, separators, format.closed);
      }
      return await compiler.compileStructuralTag({ type: 'structural_tag', format: await structuralFormat(format) });
    } catch (error) {
      throw invalidFormat(error);
    }
  }

  private grammarCompiler(): Promise<GrammarCompiler> {
    this.compiler ??= (async () => {
      const { tokens, kind, prependSpace } = this.tokenizer.grammarVocabulary(this.vocabSize);
      const info = await xgrammar().TokenizerInfo.createTokenizerInfo(tokens, kind, prependSpace, this.vocabSize, [...this.stopIds]);
      return xgrammar().GrammarCompiler.createGrammarCompiler(info, true);
    })();
    return this.compiler;
  }
}

/**
 * One sequence's position in its grammar. The next step's bitmask is computed as soon as a token
 * is accepted (xgrammar's call is asynchronous only in form); the scheduler yields to the event
 * loop between rounds, so the mask is ready by the time the next logits arrive.
 */
export class TokenConstraint {
  private bitmask: Int32Array | null = null;
  private failure: unknown = null;

  constructor(
    private readonly matcher: GrammarMatcher,
    private readonly vocabSize: number,
    private readonly closers: Closers,
  ) {
    this.prepare();
  }

  /** Resolves once the first step's mask is known. */
  async ready(): Promise<void> {
    while (!this.bitmask && !this.failure) await new Promise((resolve) => setImmediate(resolve));
    if (this.failure) throw this.failure;
  }

  /** True once the output is whole and the end-of-sequence token was accepted. */
  get complete(): boolean {
    return this.matcher.isTerminated();
  }

  /**
   * This step's logits with every token that would break the format set to -inf. `closing`: the
   * budget is nearly spent, so when any allowed token closes a string, array or object (or ends
   * a finished answer), only those stay.
   */
  mask(row: MxArray, closing = false): MxArray {
    if (this.failure) throw this.failure;
    const words = this.bitmask;
    if (!words) throw new ServeError('internal_error', 'constrained decoding: the token mask was not ready when the logits were');
    const allowed = countAllowed(words, this.vocabSize);
    if (closing) {
      const isAllowed = (id: number): boolean => (((words[id >>> 5] as number) >>> (id & 31)) & 1) === 1;
      // Nearly every token may follow inside a string; only a few between values.
      const inString = allowed > this.vocabSize / 2;
      const [preferred, other] = inString ? [this.closers.quotes, this.closers.brackets] : [this.closers.brackets, this.closers.quotes];
      const closers = preferred.filter(isAllowed);
      if (closers.length === 0) closers.push(...other.filter(isAllowed));
      if (closers.length > 0) return keepOnly(row, closers, this.vocabSize);
      if (!inString) return keepOnly(row, this.longest(tokensWithBit(words, this.vocabSize, 1, allowed)), this.vocabSize);
    }
    if (allowed === this.vocabSize) return row;
    if (allowed === 0) throw new ServeError('internal_error', 'constrained decoding: the grammar allows no token here');
    // Scatter whichever list is shorter: inside a JSON string nearly every token is allowed,
    // between values only a handful are.
    const listAllowed = allowed <= this.vocabSize / 2;
    const ids = tokensWithBit(words, this.vocabSize, listAllowed ? 1 : 0, listAllowed ? allowed : this.vocabSize - allowed);
    if (listAllowed) return keepOnly(row, ids, this.vocabSize);
    const keep = mx.ones([this.vocabSize], mx.int32).at(mx.array(ids, mx.int32)).subtract(1);
    return mx.where(keep, row, mx.array(-Infinity, mx.float32));
  }

  private longest(ids: number[]): number[] {
    const { lengths } = this.closers;
    const most = Math.max(...ids.map((id) => lengths[id] as number));
    return ids.filter((id) => lengths[id] === most);
  }

  advance(token: number): void {
    if (!this.matcher.acceptToken(token)) {
      throw new ServeError('internal_error', `constrained decoding: token ${token} was drawn although the grammar refused it`);
    }
    this.bitmask = null;
    if (!this.matcher.isTerminated()) this.prepare();
  }

  dispose(): void {
    this.matcher.dispose();
  }

  private prepare(): void {
    this.matcher.getNextTokenBitmask().then(
      (words) => (this.bitmask = words),
      (error: unknown) => (this.failure = error),
    );
  }
}

function countAllowed(words: Int32Array, vocabSize: number): number {
  let count = 0;
  for (let id = 0; id < vocabSize; id++) count += ((words[id >>> 5] as number) >>> (id & 31)) & 1;
  return count;
}

/** The `count` token ids whose bit in the mask is `bit`. */
function tokensWithBit(words: Int32Array, vocabSize: number, bit: 0 | 1, count: number): number[] {
  const ids = new Array<number>(count);
  let n = 0;
  for (let id = 0; id < vocabSize; id++) if ((((words[id >>> 5] as number) >>> (id & 31)) & 1) === bit) ids[n++] = id;
  return ids;
}

function keepOnly(row: MxArray, ids: number[], vocabSize: number): MxArray {
  const keep = mx.zeros([vocabSize], mx.int32).at(mx.array(ids, mx.int32)).add(1);
  return mx.where(keep, row, mx.array(-Infinity, mx.float32));
}
