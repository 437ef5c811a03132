import { mx, type MxArray } from './mx.ts';

export const STEP = 256;

const along = (axis2: ReturnType<typeof mx.Slice>) => [mx.Slice(), mx.Slice(), axis2, mx.Slice()];

/**
 * Keys and values of one layer for one sequence (a prompt being prefilled, or state kept by the
 * prompt cache), in buffers that grow by STEP positions and are written in place. A layer with
 * a sliding window drops the positions no later query can see when its buffer would grow, so
 * it holds at most its window plus one chunk: positions [start, offset) are kept.
 */
export class KVCache {
  private keys: MxArray | null = null;
  private values: MxArray | null = null;
  offset = 0;
  /** The first position still held; above 0 only for a windowed layer. */
  start = 0;

  constructor(readonly window: number | null = null) {}

  /** Writes positions [offset, offset + length) and returns every position held: [start, offset + length). */
  update(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const length = keys.shape[2] ?? 1;
    const held = this.offset - this.start;
    if (!this.keys || !this.values || held + length > (this.keys.shape[2] ?? 0)) {
      const kept = this.window === null ? this.start : Math.max(this.start, this.offset - this.window + 1);
      const capacity = Math.ceil((this.offset - kept + length) / STEP) * STEP;
      this.keys = this.relayout(this.keys, keys, capacity, kept);
      this.values = this.relayout(this.values, values, capacity, kept);
      this.start = kept;
    }
    const written = along(mx.Slice(this.offset - this.start, this.offset - this.start + length));
    this.keys.indexPut_(written, keys);
    this.values.indexPut_(written, values);
    this.offset += length;
    const filled = along(mx.Slice(0, this.offset - this.start));
    return [this.keys.index(...filled), this.values.index(...filled)];
  }

  /** Keys and values of positions [start, offset), each [batch, kvHeads, offset - start, headDim]. */
  held(): [MxArray, MxArray] | null {
    if (!this.keys || !this.values || this.offset === this.start) return null;
    const filled = along(mx.Slice(0, this.offset - this.start));
    return [this.keys.index(...filled), this.values.index(...filled)];
  }

  state(): MxArray[] {
    return this.keys && this.values ? [this.keys, this.values] : [];
  }

  /** Bytes of the buffers this cache holds (their whole capacity). */
  get bytes(): number {
    return this.state().reduce((sum, buffer) => sum + (buffer.nbytes ?? buffer.size * buffer.itemsize), 0);
  }

  /** A cache holding exactly these positions [start, start + keys' length). */
  static holding(window: number | null, start: number, keys: MxArray, values: MxArray): KVCache {
    const cache = new KVCache(window);
    cache.keys = keys;
    cache.values = values;
    cache.start = start;
    cache.offset = start + (keys.shape[2] ?? 0);
    return cache;
  }

  /** This cache's held positions copied into buffers of exactly that size, for keeping. */
  compact(): KVCache {
    const held = this.held();
    if (!held) return new KVCache(this.window);
    const [keys, values] = held.map((buffer) => mx.add(buffer, 0)) as [MxArray, MxArray];
    mx.eval(keys, values);
    return KVCache.holding(this.window, this.start, keys, values);
  }

  /**
   * Whether this cache holds all a continuation after its first `length` positions needs: those
   * positions, and (windowed) the window before position `length`.
   */
  canResumeAt(length: number): boolean {
    const needed = this.window === null ? 0 : Math.max(0, length - this.window + 1);
    return length <= this.offset && this.start <= needed;
  }

  /**
   * A cache holding this one's positions before `length` (see canResumeAt). It reads the same
   * buffers; its first update copies them into buffers of its own, so neither can change the other.
   */
  prefix(length: number): KVCache {
    const held = this.held();
    if (!held || length <= this.start) return new KVCache(this.window);
    const kept = along(mx.Slice(0, length - this.start));
    return KVCache.holding(this.window, this.start, held[0].index(...kept), held[1].index(...kept));
  }

  /** New buffers of `capacity` positions starting at position `kept`, holding what this cache had from there. */
  private relayout(previous: MxArray | null, like: MxArray, capacity: number, kept: number): MxArray {
    const [batch, heads, , dim] = like.shape as [number, number, number, number];
    const fresh = mx.zeros([batch, heads, capacity, dim], like.dtype);
    const count = this.offset - kept;
    if (!previous || count === 0) return fresh;
    fresh.indexPut_(along(mx.Slice(0, count)), previous.index(...along(mx.Slice(kept - this.start, this.offset - this.start))));
    return fresh;
  }
}
