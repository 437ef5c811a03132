/** The building blocks the architectures share: linear (dense or MLX affine-quantized), embedding, norms, MLP. */
import { mx, type MxArray } from './mx.ts';
import type { QuantSpec, WeightStore } from './weights.ts';

export interface Module {
  parameters(): MxArray[];
}

export class Linear implements Module {
  private constructor(
    private readonly weight: MxArray,
    private readonly bias: MxArray | undefined,
    private readonly quant: { scales: MxArray; biases: MxArray; spec: QuantSpec } | null,
  ) {}

  static load(store: WeightStore, prefix: string, withBias = false): Linear {
    const spec = store.quantSpecFor(prefix);
    const weight = spec ? store.takeRaw(`${prefix}.weight`) : store.take(`${prefix}.weight`);
    const quant = spec ? { scales: store.take(`${prefix}.scales`), biases: store.take(`${prefix}.biases`), spec } : null;
    const bias = withBias ? store.take(`${prefix}.bias`) : store.takeOptional(`${prefix}.bias`);
    return new Linear(weight, bias, quant);
  }

  forward(x: MxArray): MxArray {
    const y = this.quant
      ? mx.quantizedMatmul(x, this.weight, this.quant.scales, this.quant.biases, true, this.quant.spec.groupSize, this.quant.spec.bits)
      : mx.matmul(x, this.weight.T);
    return this.bias ? mx.add(y, this.bias) : y;
  }

  parameters(): MxArray[] {
    return [this.weight, ...(this.bias ? [this.bias] : []), ...(this.quant ? [this.quant.scales, this.quant.biases] : [])];
  }
}

export class Embedding implements Module {
  private constructor(
    private readonly weight: MxArray,
    private readonly quant: { scales: MxArray; biases: MxArray; spec: QuantSpec } | null,
  ) {}

  static load(store: WeightStore, prefix: string): Embedding {
    const spec = store.quantSpecFor(prefix);
    const weight = spec ? store.takeRaw(`${prefix}.weight`) : store.take(`${prefix}.weight`);
    const quant = spec ? { scales: store.take(`${prefix}.scales`), biases: store.take(`${prefix}.biases`), spec } : null;
    return new Embedding(weight, quant);
  }

  get rows(): number {
    return this.weight.shape[0] ?? 0;
  }

  forward(ids: MxArray): MxArray {
    if (!this.quant) return mx.take(this.weight, ids, 0);
    const { scales, biases, spec } = this.quant;
    return mx.dequantize(mx.take(this.weight, ids, 0), mx.take(scales, ids, 0), mx.take(biases, ids, 0), spec.groupSize, spec.bits);
  }

  /** Tied output projection: logits against the embedding matrix. */
  asLinear(x: MxArray): MxArray {
    if (!this.quant) return mx.matmul(x, this.weight.T);
    const { scales, biases, spec } = this.quant;
    return mx.quantizedMatmul(x, this.weight, scales, biases, true, spec.groupSize, spec.bits);
  }

  parameters(): MxArray[] {
    return [this.weight, ...(this.quant ? [this.quant.scales, this.quant.biases] : [])];
  }
}

export class RMSNorm implements Module {
  constructor(private readonly weight: MxArray, private readonly eps: number) {}

  static load(store: WeightStore, prefix: string, eps: number): RMSNorm {
    return new RMSNorm(store.take(`${prefix}.weight`), eps);
  }

  forward(x: MxArray): MxArray {
    return mx.fast.rmsNorm(x, this.weight, this.eps);
  }

  parameters(): MxArray[] {
    return [this.weight];
  }
}

/** SwiGLU feed-forward: down(silu(gate(x)) * up(x)). */
export class GatedMLP implements Module {
  constructor(private readonly gate: Linear, private readonly up: Linear, private readonly down: Linear) {}

  static load(store: WeightStore, prefix: string): GatedMLP {
    return new GatedMLP(Linear.load(store, `${prefix}.gate_proj`), Linear.load(store, `${prefix}.up_proj`), Linear.load(store, `${prefix}.down_proj`));
  }

  forward(x: MxArray): MxArray {
    const gate = this.gate.forward(x);
    return this.down.forward(mx.multiply(mx.multiply(gate, mx.sigmoid(gate)), this.up.forward(x)));
  }

  parameters(): MxArray[] {
    return [...this.gate.parameters(), ...this.up.parameters(), ...this.down.parameters()];
  }
}
