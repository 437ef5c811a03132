import type { HeldWeights, WeightPlacement } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';
import { mx, type MxArray } from './mx.ts';

export interface QuantSpec {
  groupSize: number;
  bits: number;
}

/** A weight matrix as stored: dense, or MLX affine-quantized with its scales and biases. */
export interface MatrixWeights {
  weight: MxArray;
  quant: { scales: MxArray; biases: MxArray; spec: QuantSpec } | null;
}

export interface QuantizationConfig {
  default: QuantSpec | null;
  overrides: Map<string, QuantSpec | false>;
}

/**
 * Hands out a checkpoint's tensors by name, in a dtype the device computes in. Every tensor
 * must be claimed exactly once: what is left over or missing means the checkpoint and the
 * architecture disagree, which is an error before any evaluation happens.
 */
export class WeightStore {
  private readonly remaining: Map<string, MxArray>;
  private readonly conversions = new Set<string>();

  constructor(
    tensors: Map<string, MxArray>,
    readonly quantization: QuantizationConfig,
    readonly computeDtype: typeof mx.float32,
    readonly placement: WeightPlacement = 'native',
  ) {
    this.remaining = tensors;
  }

  /** `${prefix}.weight`, with its scales and biases when quantized, held as the placement says. */
  takeMatrix(prefix: string): MatrixWeights {
    const spec = this.quantSpecFor(prefix);
    if (!spec) return { weight: this.take(`${prefix}.weight`), quant: null };
    const weight = this.takeRaw(`${prefix}.weight`);
    const scales = this.take(`${prefix}.scales`);
    const biases = this.take(`${prefix}.biases`);
    if (this.placement === 'dequantized') {
      this.conversions.add(`${spec.bits}-bit to ${String(this.computeDtype)}`);
      return { weight: mx.dequantize(weight, scales, biases, spec.groupSize, spec.bits).astype(this.computeDtype), quant: null };
    }
    return { weight, quant: { scales, biases, spec } };
  }

  has(name: string): boolean {
    return this.remaining.has(name);
  }

  /** A float tensor, cast to the compute dtype (fp16/bf16 matmuls abort on the CPU). */
  take(name: string): MxArray {
    const tensor = this.takeRaw(name);
    if (String(tensor.dtype) === String(this.computeDtype)) return tensor;
    this.conversions.add(`${String(tensor.dtype)} to ${String(this.computeDtype)}`);
    return tensor.astype(this.computeDtype);
  }

  /** What was done to the checkpoint's tensors so far. */
  get held(): HeldWeights {
    const converted = [...this.conversions];
    return { placement: converted.some((c) => c.includes('-bit ')) ? 'dequantized' : 'native', dtype: String(this.computeDtype), converted };
  }

  takeOptional(name: string): MxArray | undefined {
    return this.remaining.has(name) ? this.take(name) : undefined;
  }

  takeRaw(name: string): MxArray {
    const tensor = this.remaining.get(name);
    if (!tensor) throw new ServeError('model_load_failed', `checkpoint is missing tensor '${name}'`);
    this.remaining.delete(name);
    return tensor;
  }

  quantSpecFor(prefix: string): QuantSpec | null {
    if (!this.remaining.has(`${prefix}.scales`)) return null;
    const override = this.quantization.overrides.get(prefix);
    if (override === false) return null;
    const spec = override ?? this.quantization.default;
    if (!spec) throw new ServeError('model_load_failed', `'${prefix}' is quantized but config.json has no quantization settings`);
    return spec;
  }

  /** Renames every tensor under `from` to live under `to` (a text model nested in a multimodal checkpoint). */
  movePrefix(from: string, to: string): void {
    for (const [name, tensor] of [...this.remaining]) {
      if (!name.startsWith(from)) continue;
      this.remaining.delete(name);
      this.remaining.set(to + name.slice(from.length), tensor);
    }
  }

  discard(predicate: (name: string) => boolean): void {
    for (const name of [...this.remaining.keys()]) if (predicate(name)) this.remaining.delete(name);
  }

  assertConsumed(): void {
    const left = [...this.remaining.keys()];
    if (left.length > 0) {
      throw new ServeError('model_load_failed', `checkpoint has tensors the architecture does not use: ${left.slice(0, 5).join(', ')}${left.length > 5 ? ', ...' : ''}`);
    }
  }
}
