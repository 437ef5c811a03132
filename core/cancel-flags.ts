/**
 * Control data, kept apart from telemetry: one cancellation flag per request slot in shared
 * memory. The main thread sets a slot's flag when its client goes away or its time runs out;
 * the worker reads it every decode step, without a message between them.
 */
export const CANCEL_SLOTS = 4096;

export const createCancelBuffer = (): SharedArrayBuffer => new SharedArrayBuffer(CANCEL_SLOTS * Int32Array.BYTES_PER_ELEMENT);

export class CancelFlags {
  private readonly flags: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.flags = new Int32Array(buffer);
  }

  request(slot: number): void { Atomics.store(this.flags, slot, 1); }
  clear(slot: number): void { Atomics.store(this.flags, slot, 0); }
  isSet(slot: number): boolean { return Atomics.load(this.flags, slot) !== 0; }
}
