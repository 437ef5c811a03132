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
export type GeneratedModel = typeof FP32_05B | typeof Q4_05B;

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
}

export interface BenchModel {
  /** The name requests use (the server's registry name). */
  name: string;
  /** The name results use: `name`, or `name@native` when measured with --weights native. */
  label: string;
  /** The server's --weights for this model; null: the server's default (auto: fp32 on a CPU when it fits). */
  serverWeights: 'native' | null;
  /** Where the raw engine loads it from; null when only the server knows it. */
  path: string | null;
  generated: GeneratedModel | null;
  workload: Workload;
}

export const QUICK_WORKLOAD: Workload = { maxTokens: 12, repeats: 2, shortPromptWords: 12, longPromptWords: 150, concurrency: [1, 2, 4], sweepRounds: 1, sweepMaxTokens: 8, allRoutes: true };

const WORKLOADS: Record<string, Workload> = {
  [BUILTIN_MODEL]: { maxTokens: 32, repeats: 5, shortPromptWords: 12, longPromptWords: 800, concurrency: [1, 2, 4, 8, 16], sweepRounds: 3, sweepMaxTokens: 16, allRoutes: true },
  [FP32_05B]: { maxTokens: 8, repeats: 3, shortPromptWords: 12, longPromptWords: 200, concurrency: [1, 2, 4, 8], sweepRounds: 1, sweepMaxTokens: 6, allRoutes: false },
  [Q4_05B]: { maxTokens: 4, repeats: 3, shortPromptWords: 6, longPromptWords: 24, concurrency: [1, 2], sweepRounds: 1, sweepMaxTokens: 3, allRoutes: false },
};
/** A model named with --model: its speed is unknown, so it gets modest counts. */
const OTHER_WORKLOAD: Workload = { maxTokens: 16, repeats: 3, shortPromptWords: 12, longPromptWords: 200, concurrency: [1, 2, 4, 8], sweepRounds: 2, sweepMaxTokens: 8, allRoutes: true };

export const benchModelsDir = (cacheDir: string): string => join(cacheDir, 'bench-models');

export function workloadFor(name: string, quick: boolean): Workload {
  if (quick) return QUICK_WORKLOAD;
  return WORKLOADS[name] ?? OTHER_WORKLOAD;
}

export function generatedModel(name: string, cacheDir: string, quick: boolean, serverWeights: 'native' | null = null): BenchModel {
  const generated = name === FP32_05B || name === Q4_05B ? name : null;
  return { name, label: serverWeights ? `${name}@${serverWeights}` : name, serverWeights, path: join(benchModelsDir(cacheDir), name), generated, workload: workloadFor(name, quick) };
}

export const isComplete = (dir: string): boolean => existsSync(join(dir, 'model.safetensors')) && existsSync(join(dir, 'config.json'));

/** The environment the bench's children run with: glibc returns freed weights to the OS, as the launcher arranges for the server. */
function childEnv(): NodeJS.ProcessEnv {
  return { ...process.env, MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' };
}

/** Writes a generated model's random weights (once per cache dir), in a child process. */
export async function makeModel(model: BenchModel, cacheDir: string, progress: (message: string) => void): Promise<void> {
  if (!model.path || !model.generated || isComplete(model.path)) return;
  progress(`${model.name}: generating random weights into ${model.path} (once per cache dir)`);
  const format = model.generated === FP32_05B ? 'fp32' : '4bit';
  const script = fileURLToPath(new URL('./make-model.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), '--expose-gc', script, format, model.path, join(cacheDir, BUILTIN_MODEL)], { env: childEnv(), stdio: ['ignore', 'ignore', 'inherit'] });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`making ${model.name} failed (exit ${code})`);
}
