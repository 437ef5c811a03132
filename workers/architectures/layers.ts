/** The building blocks the architectures share: linear (dense or MLX affine-quantized), embedding, norms, MLP. */
import { ServeError } from '../../core/errors.ts';
import { mx, type MxArray } from './mx.ts';
import type { MatrixWeights, WeightStore } from './weights.ts';

export interface Module {
  parameters(): MxArray[];
}

export class Linear implements Module {
  private constructor(
    private readonly weight: MxArray,
    private readonly bias: MxArray | undefined,
    private readonly quant: MatrixWeights['quant'],
  ) {}

  static load(store: WeightStore, prefix: string, withBias = false): Linear {
    const { weight, quant } = store.takeMatrix(prefix);
    const bias = withBias ? store.take(`${prefix}.bias`) : store.takeOptional(`${prefix}.bias`);
    return new Linear(weight, bias, quant);
  }

  /** Output features (rows of the weight, packed or not). */
  get outputs(): number {
    return this.weight.shape[0] ?? 0;
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
    private readonly quant: MatrixWeights['quant'],
  ) {}

  static load(store: WeightStore, prefix: string): Embedding {
    const { weight, quant } = store.takeMatrix(prefix);
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

  /** `unitOffset`: Gemma stores w and scales by (1 + w). */
  static load(store: WeightStore, prefix: string, eps: number, unitOffset = false): RMSNorm {
    const weight = store.take(`${prefix}.weight`);
    return new RMSNorm(unitOffset ? mx.add(weight, 1) : weight, eps);
  }

  forward(x: MxArray): MxArray {
    return mx.fast.rmsNorm(x, this.weight, this.eps);
  }

  parameters(): MxArray[] {
    return [this.weight];
  }
}

export type Activation = 'silu' | 'gelu' | 'gelu_tanh';

/** The activation a config's `hidden_act` / `hidden_activation` names. */
export function activationNamed(name: string | undefined, fallback: Activation): Activation {
  switch (name) {
    case undefined:
      return fallback;
    case 'silu':
    case 'swish':
      return 'silu';
    case 'gelu':
      return 'gelu';
    case 'gelu_pytorch_tanh':
    case 'gelu_new':
    case 'gelu_fast':
      return 'gelu_tanh';
    default:
      throw new ServeError('unsupported_model', `unsupported activation '${name}' (supported: silu, gelu, gelu_pytorch_tanh)`);
  }
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

function activate(activation: Activation, x: MxArray): MxArray {
  switch (activation) {
    case 'silu':
      return mx.multiply(x, mx.sigmoid(x));
    case 'gelu':
      return mx.multiply(mx.multiply(x, 0.5), mx.add(mx.erf(mx.multiply(x, Math.SQRT1_2)), 1));
    case 'gelu_tanh': {
      const inner = mx.multiply(mx.add(x, mx.multiply(mx.multiply(mx.multiply(x, x), x), 0.044715)), SQRT_2_OVER_PI);
      return mx.multiply(mx.multiply(x, 0.5), mx.add(mx.tanh(inner), 1));
    }
  }
}

/** cap * tanh(x / cap): Gemma's soft limit on attention scores and logits. */
export function softCap(x: MxArray, cap: number): MxArray {
  return mx.multiply(mx.tanh(mx.divide(x, cap)), cap);
}

/**
 * Gated feed-forward: down(act(gate(x)) * up(x)). Gate and up are two projections, or one
 * fused `gate_up_proj` (Phi-3) whose first half of outputs is the gate.
 */
export class GatedMLP implements Module {
  constructor(
    private readonly gateUp: Linear | [gate: Linear, up: Linear],
    private readonly down: Linear,
    private readonly activation: Activation,
  ) {}

  static load(store: WeightStore, prefix: string, activation: Activation = 'silu'): GatedMLP {
    const gateUp: GatedMLP['gateUp'] = store.has(`${prefix}.gate_up_proj.weight`)
      ? Linear.load(store, `${prefix}.gate_up_proj`)
      : [Linear.load(store, `${prefix}.gate_proj`), Linear.load(store, `${prefix}.up_proj`)];
    return new GatedMLP(gateUp, Linear.load(store, `${prefix}.down_proj`), activation);
  }

  forward(x: MxArray): MxArray {
    let gate: MxArray;
    let up: MxArray;
    if (Array.isArray(this.gateUp)) {
      gate = this.gateUp[0].forward(x);
      up = this.gateUp[1].forward(x);
    } else {
      const half = this.gateUp.outputs / 2;
      const both = this.gateUp.forward(x);
      gate = both.index('...', mx.Slice(0, half));
      up = both.index('...', mx.Slice(half));
    }
    return this.down.forward(mx.multiply(activate(this.activation, gate), up));
  }

  parameters(): MxArray[] {
    return [...(Array.isArray(this.gateUp) ? this.gateUp : [this.gateUp]), this.down].flatMap((m) => m.parameters());
  }
}
