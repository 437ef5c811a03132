import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { HeldWeights, WeightPlacement } from '../../core/protocol.ts';
import { ServeError } from '../../core/errors.ts';
import { readJson, weightFiles } from '../../core/model-folder.ts';
import type { LanguageModel } from './decoder.ts';
import * as gemma2 from './gemma2.ts';
import * as gemma3 from './gemma3.ts';
import * as llama from './llama.ts';
import * as mistral from './mistral.ts';
import { mx, type MxArray } from './mx.ts';
import * as phi3 from './phi3.ts';
import * as qwen2 from './qwen2.ts';
import * as qwen3 from './qwen3.ts';
import { WeightStore, type QuantizationConfig, type QuantSpec } from './weights.ts';

type ArchitectureLoader = (store: WeightStore, config: never) => LanguageModel;

const architectures: Record<string, ArchitectureLoader> = {
  llama: llama.load,
  mistral: mistral.load,
  qwen2: qwen2.load,
  qwen3: qwen3.load,
  gemma2: gemma2.load,
  gemma3_text: gemma3.loadText,
  gemma3: gemma3.loadMultimodal,
  phi3: phi3.load,
};

export const supportedArchitectures = (): string[] => Object.keys(architectures);

export interface ModelConfig {
  model_type: string;
  quantization?: Record<string, unknown> | false;
  eos_token_id?: number | number[];
  [key: string]: unknown;
}

function existingWeightFiles(dir: string): string[] {
  const files = weightFiles(dir);
  const missing = files.find((file) => !existsSync(file));
  if (missing) throw new ServeError('model_load_failed', `${missing} is missing (a model folder needs model.safetensors or the shards its index names)`);
  return files;
}

function readTensors(files: string[]): Map<string, MxArray> {
  const tensors = new Map<string, MxArray>();
  for (const file of files) {
    let record: Record<string, MxArray>;
    try {
      record = mx.load(file) as unknown as Record<string, MxArray>;
    } catch (error) {
      throw new ServeError('model_load_failed', `cannot read ${file}: ${(error as Error).message}`);
    }
    for (const [name, tensor] of Object.entries(record)) tensors.set(name, tensor);
  }
  return tensors;
}

function quantSpec(value: unknown): QuantSpec | null {
  if (!value || typeof value !== 'object') return null;
  const { group_size: groupSize, bits } = value as { group_size?: unknown; bits?: unknown };
  if (typeof groupSize !== 'number' || typeof bits !== 'number') return null;
  if (![32, 64, 128].includes(groupSize) || ![2, 3, 4, 6, 8].includes(bits)) {
    throw new ServeError('unsupported_model', `unsupported quantization: group_size ${groupSize}, bits ${bits}`);
  }
  return { groupSize, bits };
}

function quantizationConfig(config: ModelConfig): QuantizationConfig {
  const raw = config.quantization ?? (config as { quantization_config?: Record<string, unknown> }).quantization_config;
  const overrides = new Map<string, QuantSpec | false>();
  if (!raw) return { default: null, overrides };
  for (const [key, value] of Object.entries(raw)) {
    if (value === false) overrides.set(key, false);
    else if (value && typeof value === 'object') {
      const spec = quantSpec(value);
      if (spec) overrides.set(key, spec);
    }
  }
  return { default: quantSpec(raw), overrides };
}

/**
 * The dtype matmuls run in. On the CPU node-mlx 0.0.7 implements float32 only. On Metal, half
 * precision as mlx-lm runs it: a bfloat16 checkpoint stays bfloat16 (its activations may not fit
 * float16's range), anything else computes in float16, the dtype mlx-lm's converter writes.
 */
export function computeDtype(tensors: Iterable<MxArray> = []): typeof mx.float32 {
  if (!mx.metal.isAvailable()) return mx.float32;
  for (const tensor of tensors) if (String(tensor.dtype) === String(mx.bfloat16)) return mx.bfloat16;
  return mx.float16;
}

export function loadModel(dir: string, placement: WeightPlacement = 'native'): { model: LanguageModel; config: ModelConfig; weights: HeldWeights } {
  const config = readJson<ModelConfig>(join(dir, 'config.json'), 'config.json');
  const architecture = architectures[config.model_type];
  if (!architecture) {
    throw new ServeError('unsupported_model', `model_type '${config.model_type}' is not supported (supported: ${supportedArchitectures().join(', ')})`);
  }
  const tensors = readTensors(existingWeightFiles(dir));
  const store = new WeightStore(tensors, quantizationConfig(config), computeDtype(tensors.values()), placement);
  let model: LanguageModel;
  try {
    model = architecture(store, config as never);
  } catch (error) {
    if (error instanceof ServeError) throw error;
    throw new ServeError('model_load_failed', `weights do not fit the '${config.model_type}' architecture: ${(error as Error).message}`);
  }
  store.assertConsumed();
  mx.eval(...model.parameters());
  return { model, config, weights: store.held };
}

export function parameterBytes(model: LanguageModel): number {
  return model.parameters().reduce((sum, p) => sum + (p.nbytes ?? p.size * p.itemsize), 0);
}
