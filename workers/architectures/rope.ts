import { ServeError } from '../../core/errors.ts';
import { mx, type MxArray } from './mx.ts';

export interface RopeScaling {
  type?: string;
  rope_type?: string;
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

export interface RotaryEmbedding {
  /** x [batch, heads, length, headDim] whose rows all sit at positions offset..offset+length-1. */
  apply(x: MxArray, offset: number): MxArray;
  /** x [rows, heads, 1, headDim], row r at position positions[r] (float32 [rows]). */
  applyAt(x: MxArray, positions: MxArray): MxArray;
}

type Rotation = { cos: MxArray; sin: MxArray };

const rotation = (angles: MxArray): Rotation => ({ cos: mx.cos(angles), sin: mx.sin(angles) });

/**
 * Rotates the first `dims` features of x [rows, heads, length, headDim] by angles whose cosines
 * and sines are [rows, 1, length, dims / 2] (the first half against the second, as MLX's
 * non-traditional RoPE).
 */
function rotate(x: MxArray, dims: number, { cos, sin }: Rotation): MxArray {
  const half = dims / 2;
  const first = x.index('...', mx.Slice(0, half));
  const second = x.index('...', mx.Slice(half, dims));
  const rotated = [mx.subtract(mx.multiply(first, cos), mx.multiply(second, sin)), mx.add(mx.multiply(second, cos), mx.multiply(first, sin))];
  const rest = (x.shape[x.ndim - 1] ?? dims) > dims ? [x.index('...', mx.Slice(dims))] : [];
  return mx.concatenate([...rotated, ...rest], -1);
}

/**
 * The rotation [rows, 1, 1, dims / 2] for one position per row. A batch step passes the same
 * positions to every layer's keys and queries, so it is computed once per step and embedding.
 */
class RowRotation {
  private last: { positions: MxArray; rotation: Rotation } | null = null;

  constructor(private readonly inverseFrequencies: MxArray) {}

  at(positions: MxArray): Rotation {
    if (this.last?.positions !== positions) {
      const rows = positions.shape[0] ?? 1;
      this.last = { positions, rotation: rotation(mx.multiply(positions.reshape([rows, 1, 1, 1]), this.inverseFrequencies)) };
    }
    return this.last.rotation;
  }
}

/**
 * Plain or linearly scaled RoPE: MLX's fused kernel where every row shares its positions. Rows
 * at their own positions use ordinary ops with the frequencies computed as MLX computes them
 * (exp(-i * ln(base) / half)): unscaled, that matched the fused kernel bit for bit on the CPU.
 */
class FastRope implements RotaryEmbedding {
  private readonly rowRotation: RowRotation;

  constructor(private readonly dims: number, private readonly base: number, private readonly scale: number) {
    const half = dims / 2;
    this.rowRotation = new RowRotation(mx.multiply(mx.exp(mx.multiply(mx.arange(0, half, 1, mx.float32), -Math.log(base) / half)), scale));
  }

  apply(x: MxArray, offset: number): MxArray {
    return mx.fast.rope(x, this.dims, false, this.base, this.scale, offset);
  }

  applyAt(x: MxArray, positions: MxArray): MxArray {
    return rotate(x, this.dims, this.rowRotation.at(positions));
  }
}

/**
 * RoPE from explicit inverse frequencies, written with ordinary ops, for scalings the
 * fused kernel of node-mlx 0.0.7 cannot express (it takes no frequency table).
 */
class FrequencyRope implements RotaryEmbedding {
  private readonly rowRotation: RowRotation;

  constructor(private readonly dims: number, private readonly inverseFrequencies: MxArray) {
    this.rowRotation = new RowRotation(inverseFrequencies);
  }

  apply(x: MxArray, offset: number): MxArray {
    const length = x.shape[x.ndim - 2] ?? 1;
    const positions = mx.arange(offset, offset + length, 1, mx.float32);
    return rotate(x, this.dims, rotation(mx.multiply(mx.expandDims(positions, 1), mx.expandDims(this.inverseFrequencies, 0))));
  }

  applyAt(x: MxArray, positions: MxArray): MxArray {
    return rotate(x, this.dims, this.rowRotation.at(positions));
  }
}

function llama3InverseFrequencies(dims: number, base: number, scaling: RopeScaling): MxArray {
  const factor = scaling.factor ?? 8;
  const lowFreqFactor = scaling.low_freq_factor ?? 1;
  const highFreqFactor = scaling.high_freq_factor ?? 4;
  const originalContext = scaling.original_max_position_embeddings ?? 8192;
  const lowFreqWavelen = originalContext / lowFreqFactor;
  const highFreqWavelen = originalContext / highFreqFactor;
  const values: number[] = [];
  for (let i = 0; i < dims; i += 2) {
    const inv = 1 / base ** (i / dims);
    const wavelen = (2 * Math.PI) / inv;
    if (wavelen < highFreqWavelen) values.push(inv);
    else if (wavelen > lowFreqWavelen) values.push(inv / factor);
    else {
      const smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      values.push((1 - smooth) * (inv / factor) + smooth * inv);
    }
  }
  return mx.array(values, mx.float32);
}

export function createRope(dims: number, base: number, scaling: RopeScaling | null | undefined): RotaryEmbedding {
  const kind = scaling?.rope_type ?? scaling?.type ?? 'default';
  switch (kind) {
    case 'default':
      return new FastRope(dims, base, 1);
    case 'linear':
      return new FastRope(dims, base, 1 / (scaling?.factor ?? 1));
    case 'llama3':
      return new FrequencyRope(dims, llama3InverseFrequencies(dims, base, scaling ?? {}));
    default:
      throw new ServeError('unsupported_model', `unsupported rope scaling '${kind}' (supported: default, linear, llama3)`);
  }
}

/** transformers 5's spelling: base and scaling in one object (per layer type for Gemma 3). */
export interface RopeParameters extends RopeScaling {
  rope_theta?: number;
  partial_rotary_factor?: number;
}

export interface RopeConfig {
  rope_theta?: number;
  rope_scaling?: RopeScaling | null;
  rope_parameters?: RopeParameters | Record<string, RopeParameters> | null;
  partial_rotary_factor?: number;
}

function isRopeParameters(value: unknown): value is RopeParameters {
  return typeof value === 'object' && value !== null && ('rope_theta' in value || 'rope_type' in value);
}

/**
 * RoPE settings from a config in either spelling: `rope_parameters` (transformers 5, keyed by
 * layer type where layers differ) or the legacy `rope_theta` + `rope_scaling`. The legacy keys
 * fill in what `rope_parameters` lacks.
 */
export function ropeSettings(config: RopeConfig, layerType?: string): { base: number | undefined; scaling: RopeScaling | null; rotaryFraction: number } {
  const raw = config.rope_parameters;
  const perLayer = raw && !isRopeParameters(raw) && layerType ? (raw as Record<string, RopeParameters>)[layerType] : undefined;
  const parameters = perLayer ?? (isRopeParameters(raw) ? raw : undefined);
  return {
    base: parameters?.rope_theta ?? config.rope_theta,
    scaling: parameters ?? config.rope_scaling ?? null,
    rotaryFraction: parameters?.partial_rotary_factor ?? config.partial_rotary_factor ?? 1,
  };
}

/** The rotary embedding a config describes, over `headDim` (or the rotary fraction of it). */
export function ropeFromConfig(config: RopeConfig, headDim: number, defaultBase: number): RotaryEmbedding {
  const { base, scaling, rotaryFraction } = ropeSettings(config);
  return createRope(Math.round(headDim * rotaryFraction), base ?? defaultBase, scaling);
}
