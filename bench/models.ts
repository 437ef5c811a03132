/**
 * The models a bench run measures and the workload each can afford. The 0.5B-shaped models are
 * random weights the bench writes itself (bench/make-model.ts, in a child process), so every
 * machine measures the same shapes with no download. Nothing here loads node-mlx.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUILTIN_MODEL } from '../src/models/registry.ts';

export const FP32_05B = 'qwen2.5-0.5b-shape-fp32';
export const Q4_05B = 'qwen2.5-0.5b-shape-4bit';
/** The GGUF types the llama.cpp comparison serves the same weights in (src/gguf/convert.ts writes them). */
export const GGUF_TYPES = ['F32', 'Q4_0'] as const;
export type GgufType = (typeof GGUF_TYPES)[number];
/** How the bench writes a model it generates: MLX safetensors, or a GGUF file converted from an MLX model folder. */
export type GeneratedModel = { format: 'fp32' | '4bit' } | { format: GgufType; from: string };

/** Counts for one model: slow formats get fewer and shorter requests so a full run stays in minutes. */
export interface Workload {
  maxTokens: number;
  /** Requests per single-stream scenario. */
  repeats: number;
  shortPromptWords: number;
  longPromptWords: number;
  concurrency: number[];
  /** Rounds of the whole sweep level; each round is one aggregate tok/s sample. */
  sweepRounds: number;
  sweepMaxTokens: number;
  /** Every API route in both modes; otherwise only /v1/completions (the routes share one engine path). */
  allRoutes: boolean;
  /** The sweep level during which the health route is polled. */
  healthClients: number;
}

export interface BenchModel {
  /** The name requests use (the server's registry name). */
  name: string;
  /** The name results use: `name`, or `name@native` when measured with --weights native. */
  label: string;
  /** The server's --weights for this model; null: the server's default (auto: fp32 on a CPU when it fits). */
  serverWeights: 'native' | null;
  /** Where the raw engine (MLX) or llama-server (GGUF) loads it from; null when only the server knows it. */
  path: string | null;
  engine: 'mlx' | 'llama.cpp';
  generated: GeneratedModel | null;
  workload: Workload;
}

export const QUICK_WORKLOAD: Workload = { maxTokens: 12, repeats: 2, shortPromptWords: 12, longPromptWords: 150, concurrency: [1, 2, 4], sweepRounds: 1, sweepMaxTokens: 8, allRoutes: true, healthClients: 4 };
/** The llama.cpp comparison: every model the same counts, at the stream counts its targets name. */
export const PEER_WORKLOAD: Workload = { maxTokens: 16, repeats: 3, shortPromptWords: 12, longPromptWords: 200, concurrency: [1, 4, 16], sweepRounds: 5, sweepMaxTokens: 64, allRoutes: false, healthClients: 16 };
export const QUICK_PEER_WORKLOAD: Workload = { ...QUICK_WORKLOAD, concurrency: [1, 4], allRoutes: false };

const WORKLOADS: Record<string, Workload> = {
  [BUILTIN_MODEL]: { maxTokens: 32, repeats: 5, shortPromptWords: 12, longPromptWords: 800, concurrency: [1, 2, 4, 8, 16], sweepRounds: 3, sweepMaxTokens: 16, allRoutes: true, healthClients: 4 },
  [FP32_05B]: { maxTokens: 8, repeats: 3, shortPromptWords: 12, longPromptWords: 200, concurrency: [1, 2, 4, 8], sweepRounds: 1, sweepMaxTokens: 6, allRoutes: false, healthClients: 4 },
  [Q4_05B]: { maxTokens: 4, repeats: 3, shortPromptWords: 6, longPromptWords: 24, concurrency: [1, 2], sweepRounds: 1, sweepMaxTokens: 3, allRoutes: false, healthClients: 2 },
};
/** A model named with --model: its speed is unknown, so it gets modest counts. */
const OTHER_WORKLOAD: Workload = { maxTokens: 16, repeats: 3, shortPromptWords: 12, longPromptWords: 200, concurrency: [1, 2, 4, 8], sweepRounds: 2, sweepMaxTokens: 8, allRoutes: true, healthClients: 4 };

export const benchModelsDir = (cacheDir: string): string => join(cacheDir, 'bench-models');

export function workloadFor(name: string, quick: boolean): Workload {
  if (quick) return QUICK_WORKLOAD;
  return WORKLOADS[name] ?? OTHER_WORKLOAD;
}

export function generatedModel(name: typeof FP32_05B | typeof Q4_05B, cacheDir: string, quick: boolean, serverWeights: 'native' | null = null): BenchModel {
  const generated: GeneratedModel = { format: name === FP32_05B ? 'fp32' : '4bit' };
  return { name, label: serverWeights ? `${name}@${serverWeights}` : name, serverWeights, path: join(benchModelsDir(cacheDir), name), engine: 'mlx', generated, workload: workloadFor(name, quick) };
}

/** The MLX model in `source` converted to a GGUF file in the bench's models dir, named `<base>.<type>` (the server names GGUF files by stem). */
export function ggufModel(source: BenchModel & { path: string }, type: GgufType, cacheDir: string, workload: Workload): BenchModel {
  const name = `${source.name.replace(/-fp32$/, '')}.${type}`;
  return { name, label: name, serverWeights: null, path: join(benchModelsDir(cacheDir), `${name}.gguf`), engine: 'llama.cpp', generated: { format: type, from: source.path }, workload };
}

export const isComplete = (path: string, generated: GeneratedModel): boolean =>
  generated.format === 'fp32' || generated.format === '4bit' ? existsSync(join(path, 'model.safetensors')) && existsSync(join(path, 'config.json')) : existsSync(path);

/** The environment the bench's children run with: glibc returns freed weights to the OS, as the launcher arranges for the server. */
function childEnv(): NodeJS.ProcessEnv {
  return { ...process.env, MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' };
}

/** Writes a generated model's random weights (once per cache dir), in a child process. */
export async function makeModel(model: BenchModel, cacheDir: string, progress: (message: string) => void): Promise<void> {
  const { path, generated } = model;
  if (!path || !generated || isComplete(path, generated)) return;
  const source = 'from' in generated ? generated.from : null;
  progress(`${model.name}: ${source ? `converting ${source} to GGUF ${generated.format}` : 'generating random weights'} into ${path} (once per cache dir)`);
  const script = fileURLToPath(new URL('./make-model.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), '--expose-gc', script, generated.format, path, join(cacheDir, BUILTIN_MODEL), ...(source ? [source] : [])], { env: childEnv(), stdio: ['ignore', 'ignore', 'inherit'] });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`making ${model.name} failed (exit ${code})`);
}
