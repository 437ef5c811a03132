/**
 * The KV state of every running (decoding) sequence, laid out so each layer attends for all of
 * them at once. Every decode step writes one position for every row, so a global clock counts
 * steps and a row's tokens are written at consecutive clock ticks: row r's position p is the
 * tick start[r] + p. Each layer keeps a ring of `capacity` columns shared by all rows; tick t
 * lives in column t mod capacity. A full-attention layer's ring is as long as the oldest row
 * needs; a sliding-window layer's never exceeds its window (mlx-lm's RotatingKVCache), so a
 * step's write overwrites the tick the window has just passed. Rows shorter than the ring are
 * padded: a per-row additive mask hides the ticks before a row began.
 */
import { KVCache, STEP } from './kv-cache.ts';
import { mx, type MxArray } from './mx.ts';

const mod = (a: number, n: number): number => ((a % n) + n) % n;

const columns = (from: number, to: number) => [mx.Slice(), mx.Slice(), mx.Slice(from, to), mx.Slice()];

/** The contiguous column ranges that ticks [from, to) occupy in a ring of `capacity`, as [tick, column, count]. */
function segments(from: number, to: number, capacity: number): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let tick = from; tick < to; ) {
    const column = mod(tick, capacity);
    const count = Math.min(to - tick, capacity - column);
    out.push([tick, column, count]);
    tick += count;
  }
  return out;
}

/** Layers that share a window share a ring geometry, hence one mask per step. */
class RingGroup {
  capacity = 0;
  /** This step's additive mask [rows, 1, 1, columns] (undefined: nothing hidden) and the column range attended. */
  mask: MxArray | undefined;
  view: [number, number] = [0, 0];

  constructor(readonly window: number | null) {}

  /** Ticks a row needs kept so a query at `tick` sees all it may: its whole past, or its window. */
  span(tick: number, start: number): number {
    const past = tick - start + 1;
    return this.window === null ? past : Math.min(past, this.window);
  }
}

class RingLayer {
  keys: MxArray | null = null;
  values: MxArray | null = null;

  constructor(readonly group: RingGroup) {}
}

export class RunningBatch {
  /** The tick the next decode step writes. */
  private clock = 0;
  private starts: number[] = [];
  private readonly groups: RingGroup[] = [];
  private readonly layers: RingLayer[];

  constructor(windows: (number | null)[]) {
    this.layers = windows.map((window) => {
      let group = this.groups.find((candidate) => candidate.window === window);
      if (!group) this.groups.push((group = new RingGroup(window)));
      return new RingLayer(group);
    });
  }

  get rows(): number {
    return this.starts.length;
  }

  /** Each row's position for the next step: what RoPE rotates its new key and query by. */
  positions(): MxArray {
    return mx.array(
      this.starts.map((start) => this.clock - start),
      mx.float32,
    );
  }

  /**
   * Adds a sequence whose prompt is prefilled (its per-layer caches) as the last row. Its latest
   * position sits at the tick before the next step, like every other row's.
   */
  join(caches: KVCache[]): void {
    const start = this.clock - (caches[0]?.offset ?? 0);
    this.starts.push(start);
    this.fit();
    this.layers.forEach((layer, i) => {
      const held = (caches[i] as KVCache).held();
      if (!held) throw new Error('a sequence joins the batch before its prompt is prefilled');
      const { capacity } = layer.group;
      const cache = caches[i] as KVCache;
      const from = Math.max(start + cache.start, this.clock - capacity);
      const place = (buffer: MxArray): MxArray => {
        const [, heads, , dim] = buffer.shape as [number, number, number, number];
        const row = mx.zeros([1, heads, capacity, dim], buffer.dtype);
        for (const [tick, column, count] of segments(from, this.clock, capacity)) {
          const position = tick - start - cache.start;
          row.indexPut_(columns(column, column + count), buffer.index(...columns(position, position + count)));
        }
        return row;
      };
      const [keys, values] = held.map(place) as [MxArray, MxArray];
      layer.keys = layer.keys ? mx.concatenate([layer.keys, keys], 0) : keys;
      layer.values = layer.values ? mx.concatenate([layer.values, values], 0) : values;
    });
  }

  /** Removes row `row`; an empty batch starts its clock again. */
  leave(row: number): void {
    this.starts.splice(row, 1);
    if (this.starts.length === 0) {
      this.clock = 0;
      for (const group of this.groups) group.capacity = 0;
      for (const layer of this.layers) layer.keys = layer.values = null;
      return;
    }
    const kept = mx.array(
      Array.from({ length: this.starts.length + 1 }, (_, r) => r).filter((r) => r !== row),
      mx.int32,
    );
    for (const layer of this.layers) {
      layer.keys = mx.take(layer.keys as MxArray, kept, 0);
      layer.values = mx.take(layer.values as MxArray, kept, 0);
    }
    this.fit();
  }

  /** Row `row`'s per-layer state as a sequence's own caches (for the prompt cache). */
  extract(row: number): KVCache[] {
    const start = this.starts[row] as number;
    return this.layers.map((layer) => {
      const { capacity, window } = layer.group;
      const from = Math.max(start, this.clock - capacity);
      const take = (buffer: MxArray): MxArray => {
        const parts = segments(from, this.clock, capacity).map(([, column, count]) => buffer.index(mx.Slice(row, row + 1), mx.Slice(), mx.Slice(column, column + count)));
        return parts.length === 1 ? mx.add(parts[0] as MxArray, 0) : mx.concatenate(parts, 2);
      };
      const keys = take(layer.keys as MxArray);
      const values = take(layer.values as MxArray);
      mx.eval(keys, values);
      return KVCache.holding(window, from - start, keys, values);
    });
  }

  /**
   * Readies the rings for the next step: grows them if the step needs more columns, and builds
   * each group's mask: row r sees tick t when start[r] <= t. A windowed ring holds no more than
   * the window, so the window needs no mask of its own.
   */
  prepareStep(): void {
    const oldest = Math.min(...this.starts);
    this.fitTo(this.clock);
    for (const group of this.groups) {
      const { capacity } = group;
      const from = this.clock - group.span(this.clock, oldest) + 1;
      const first = mod(from, capacity);
      const contiguous = first <= mod(this.clock, capacity);
      group.view = contiguous ? [first, mod(this.clock, capacity) + 1] : [0, capacity];
      const ticks = Array.from({ length: group.view[1] - group.view[0] }, (_, i) => {
        const column = group.view[0] + i;
        return contiguous ? from + i : this.clock - mod(this.clock - column, capacity);
      });
      const allowed = this.starts.map((start) => ticks.map((tick) => tick >= start));
      group.mask = allowed.every((row) => row.every(Boolean))
        ? undefined
        : mx.array(
            allowed.map((row) => [[row.map((seen) => (seen ? 0 : -Infinity))]]),
            mx.float32,
          );
    }
  }

  /**
   * Writes the step's keys and values [rows, kvHeads, 1, headDim] of layer `index` at the clock's
   * column; returns the keys and values to attend to and the additive mask [rows, 1, 1, columns].
   */
  write(index: number, keys: MxArray, values: MxArray): { keys: MxArray; values: MxArray; mask: MxArray | undefined } {
    const layer = this.layers[index] as RingLayer;
    const { capacity, view, mask } = layer.group;
    const column = columns(mod(this.clock, capacity), mod(this.clock, capacity) + 1);
    (layer.keys as MxArray).indexPut_(column, keys);
    (layer.values as MxArray).indexPut_(column, values);
    const attended = columns(view[0], view[1]);
    return { keys: (layer.keys as MxArray).index(...attended), values: (layer.values as MxArray).index(...attended), mask };
  }

  /** After a step's forward pass: every row has one more position. */
  advance(): void {
    this.clock++;
  }

  state(): MxArray[] {
    return this.layers.flatMap((layer) => (layer.keys && layer.values ? [layer.keys, layer.values] : []));
  }

  /** Resizes each ring to what the rows need up to the last written tick. */
  private fit(): void {
    this.fitTo(this.clock - 1);
  }

  /**
   * Resizes each ring so the rows' visible ticks up to `tick` fit: grown by STEP columns when
   * short, shrunk when two STEPs or more are spare (rows that needed them have left).
   */
  private fitTo(tick: number): void {
    const oldest = Math.min(...this.starts);
    for (const group of this.groups) {
      const rounded = Math.ceil(Math.max(1, group.span(tick, oldest)) / STEP) * STEP;
      const wanted = group.window === null ? rounded : Math.min(rounded, group.window);
      if (wanted > group.capacity || wanted + 2 * STEP <= group.capacity) this.resize(group, wanted, oldest);
    }
  }

  private resize(group: RingGroup, capacity: number, oldest: number): void {
    const from = Math.max(oldest, this.clock - Math.min(group.capacity, capacity));
    for (const layer of this.layers) {
      if (layer.group !== group || !layer.keys || !layer.values) continue;
      const relay = (buffer: MxArray): MxArray => {
        const [rows, heads, , dim] = buffer.shape as [number, number, number, number];
        const fresh = mx.zeros([rows, heads, capacity, dim], buffer.dtype);
        if (group.capacity === 0) return fresh;
        for (const [tick, column, count] of segments(from, this.clock, group.capacity)) {
          for (const [moved, target, part] of segments(tick, tick + count, capacity)) {
            const source = column + moved - tick;
            fresh.indexPut_(columns(target, target + part), buffer.index(...columns(source, source + part)));
          }
        }
        return fresh;
      };
      layer.keys = relay(layer.keys);
      layer.values = relay(layer.values);
    }
    group.capacity = capacity;
  }
}
