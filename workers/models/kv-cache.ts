import { mx, type MxArray } from './mx.ts';

const STEP = 256;

/** Keys and values of one layer, kept in buffers that grow by STEP positions and are written in place. */
export class KVCache {
  private keys: MxArray | null = null;
  private values: MxArray | null = null;
  offset = 0;

  update(keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const [batch, heads, length, keyDim] = keys.shape as [number, number, number, number];
    const valueDim = values.shape[3] ?? keyDim;
    const needed = this.offset + length;
    if (!this.keys || !this.values || needed > (this.keys.shape[2] ?? 0)) {
      const capacity = Math.ceil(needed / STEP) * STEP;
      this.keys = this.grow(this.keys, [batch, heads, capacity, keyDim], keys.dtype);
      this.values = this.grow(this.values, [batch, heads, capacity, valueDim], values.dtype);
    }
    const window = [mx.Slice(), mx.Slice(), mx.Slice(this.offset, needed), mx.Slice()];
    this.keys.indexPut_(window, keys);
    this.values.indexPut_(window, values);
    this.offset = needed;
    const filled = [mx.Slice(), mx.Slice(), mx.Slice(0, needed), mx.Slice()];
    return [this.keys.index(...filled), this.values.index(...filled)];
  }

  state(): MxArray[] {
    return this.keys && this.values ? [this.keys, this.values] : [];
  }

  /** Bytes of the buffers this cache holds (their whole capacity). */
  get bytes(): number {
    return this.state().reduce((sum, buffer) => sum + (buffer.nbytes ?? buffer.size * buffer.itemsize), 0);
  }

  /** This cache's filled positions copied into buffers of exactly that size, for keeping. */
  compact(): KVCache {
    const copy = new KVCache();
    if (this.keys && this.values && this.offset > 0) {
      const filled = [mx.Slice(), mx.Slice(), mx.Slice(0, this.offset), mx.Slice()];
      copy.keys = mx.add(this.keys.index(...filled), 0);
      copy.values = mx.add(this.values.index(...filled), 0);
      copy.offset = this.offset;
      mx.eval(copy.keys, copy.values);
    }
    return copy;
  }

  /**
   * A cache holding this one's first `length` positions. It reads the same buffers; its first
   * update copies them into buffers of its own, so neither can change the other.
   */
  prefix(length: number): KVCache {
    const copy = new KVCache();
    if (this.keys && this.values && length > 0) {
      const kept = [mx.Slice(), mx.Slice(), mx.Slice(0, length), mx.Slice()];
      copy.keys = this.keys.index(...kept);
      copy.values = this.values.index(...kept);
      copy.offset = length;
    }
    return copy;
  }

  private grow(previous: MxArray | null, shape: number[], dtype: MxArray['dtype']): MxArray {
    const fresh = mx.zeros(shape, dtype);
    if (!previous || this.offset === 0) return fresh;
    const kept = previous.index(mx.Slice(), mx.Slice(), mx.Slice(0, this.offset), mx.Slice());
    fresh.indexPut_([mx.Slice(), mx.Slice(), mx.Slice(0, this.offset), mx.Slice()], kept);
    return fresh;
  }
}
