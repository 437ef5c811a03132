/**
 * The one definition of the shared-memory telemetry block. Both threads map the same
 * SharedArrayBuffer; every field has exactly one writer, so plain stores are enough for the
 * float fields and Atomics are used for the counters that several requests change at once.
 */
export const ModelState = { unloaded: 0, loading: 1, loaded: 2, unloading: 3 } as const;
export type ModelStateName = keyof typeof ModelState;
const stateNames = Object.keys(ModelState) as ModelStateName[];

const Int = {
  activeRequests: 0,
  queuedRequests: 1,
  modelState: 2,
} as const;
const INT_FIELDS = 4;

const Float = {
  requestsTotal: 0,
  requestsFailed: 1,
  requestsRejected: 2,
  lastActivityMs: 3,
  modelBytes: 4,
  loadedAtMs: 5,
  loadSeconds: 6,
  tokensGenerated: 7,
  promptTokens: 8,
  rssBytes: 9,
  peakRssBytes: 10,
  baselineRssBytes: 11,
  modelLoads: 12,
  modelUnloads: 13,
  startedAtMs: 14,
  /** The worker's forward passes, the sequences they carried (decoding rows and prompt chunks), and the prompt tokens among them. */
  forwardPasses: 15,
  forwardRows: 16,
  forwardPrefillTokens: 17,
  /** MLX's own counters on a GPU (Metal); all 0 on the CPU build, where the process figures apply. */
  deviceActiveBytes: 18,
  devicePeakBytes: 19,
  deviceCacheBytes: 20,
  /** The GPU's recommended working-set size (deviceInfo); 0 when MLX runs on the CPU. */
  deviceWorkingSetBytes: 21,
  /** Time the worker spent turning prompts into token ids: 0 while the engine's prompt tokenizer thread hands it ids. */
  workerTokenizeSeconds: 22,
  /** llama.cpp graphs computed on the persistent CPU thread pool (native/ggml-threadpool.c) in this process. */
  pooledGraphs: 23,
} as const;
const FLOAT_FIELDS = Object.keys(Float).length;

export interface TelemetryBuffers {
  readonly ints: SharedArrayBuffer;
  readonly floats: SharedArrayBuffer;
}

export function createTelemetryBuffers(): TelemetryBuffers {
  return {
    ints: new SharedArrayBuffer(INT_FIELDS * Int32Array.BYTES_PER_ELEMENT),
    floats: new SharedArrayBuffer(FLOAT_FIELDS * Float64Array.BYTES_PER_ELEMENT),
  };
}

export class Telemetry {
  private readonly ints: Int32Array;
  private readonly floats: Float64Array;

  constructor(readonly buffers: TelemetryBuffers) {
    this.ints = new Int32Array(buffers.ints);
    this.floats = new Float64Array(buffers.floats);
  }

  get active(): number { return Atomics.load(this.ints, Int.activeRequests); }
  get queued(): number { return Atomics.load(this.ints, Int.queuedRequests); }
  addActive(delta: number): void { Atomics.add(this.ints, Int.activeRequests, delta); }
  addQueued(delta: number): void { Atomics.add(this.ints, Int.queuedRequests, delta); }

  get modelState(): ModelStateName { return stateNames[Atomics.load(this.ints, Int.modelState)] ?? 'unloaded'; }
  set modelState(state: ModelStateName) { Atomics.store(this.ints, Int.modelState, ModelState[state]); }

  read(field: keyof typeof Float): number { return this.floats[Float[field]] ?? 0; }
  write(field: keyof typeof Float, value: number): void { this.floats[Float[field]] = value; }
  increment(field: keyof typeof Float, by = 1): void { this.floats[Float[field]] = (this.floats[Float[field]] ?? 0) + by; }
}
