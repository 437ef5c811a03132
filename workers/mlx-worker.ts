/**
 * The Piscina entry: the one thread that owns node-mlx and the loaded model. It knows nothing
 * of HTTP; it takes load and generate tasks and streams tokens back on a port per request.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import type { LoadResult, LoadSpec, WorkerReply, WorkerSettings, WorkerTask } from '../src/engine/protocol.ts';
import { ServeError } from '../src/errors.ts';
import { configureDeviceMemory, publishDeviceMemory, releaseDeviceMemory } from '../src/runtime/device-memory.ts';
import { collectGarbage } from '../src/runtime/gc.ts';
import { Telemetry } from '../src/telemetry/layout.ts';
import { GrammarConstraints } from './constraints/grammar.ts';
import { materializeDefaultModel } from './default-model.ts';
import type { LanguageModel } from './models/decoder.ts';
import { metalMemory } from './metal-memory.ts';
import { loadModel, parameterBytes, readJson, type ModelConfig } from './models/loader.ts';
import { promptIdsInWorker, validatePrompt } from './prompt.ts';
import { PromptCache } from './prompt-cache.ts';
import { isGgufPath } from '../src/gguf/format.ts';
import { LlamaEngine } from './llama-engine.ts';
import { checkRuntime } from './runtime-check.ts';
import { Scheduler } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { ModelTokenizer } from './tokenizer.ts';

const settings = workerData as WorkerSettings;

interface LoadedModel {
  source: LoadSpec;
  promptCache: PromptCache;
  model: LanguageModel;
  tokenizer: ModelTokenizer;
  eosIds: Set<number>;
  grammars: GrammarConstraints;
  info: LoadResult;
}

let loaded: LoadedModel | null = null;
let scheduler: Scheduler | null = null;
/** A GGUF model, served by llama.cpp. The worker holds it or an MLX model (`loaded`), never both. */
let gguf: Promise<LlamaEngine> | null = null;

async function dropGguf(): Promise<void> {
  const engine = await gguf?.catch(() => null);
  gguf = null;
  await engine?.dispose();
}

async function loadGguf(source: LoadSpec, telemetry: Telemetry): Promise<LlamaEngine> {
  const current = await gguf?.catch(() => null);
  if (current?.path === source.path) return current;
  await dropGguf();
  loaded = null;
  collectGarbage(true);
  gguf = LlamaEngine.load(source, telemetry);
  gguf.catch(() => (gguf = null));
  return gguf;
}

/** How often MLX's counters are copied to telemetry on a GPU, between the copies after each load and generation. */
const DEVICE_SAMPLE_MS = 1000;

function eosIds(dir: string, config: ModelConfig, tokenizer: ModelTokenizer): Set<number> {
  const ids = new Set<number>();
  const add = (value: unknown): void => {
    for (const id of Array.isArray(value) ? value : [value]) if (typeof id === 'number') ids.add(id);
  };
  add(config.eos_token_id);
  const generationConfig = join(dir, 'generation_config.json');
  if (existsSync(generationConfig)) add(readJson<{ eos_token_id?: unknown }>(generationConfig, 'generation_config.json').eos_token_id);
  const eos = tokenizer.eosToken ? tokenizer.tokenId(tokenizer.eosToken) : null;
  if (eos !== null) ids.add(eos);
  return ids;
}

function load(source: LoadSpec, telemetry: Telemetry): LoadedModel {
  if (loaded?.source.path === source.path && loaded.source.placement === source.placement) return loaded;
  loaded = null;
  const started = performance.now();
  if (source.builtin) materializeDefaultModel(source.path);
  const { model, config, weights } = loadModel(source.path, source.placement);
  const tokenizer = new ModelTokenizer(source.path);
  if (tokenizer.vocabSize > model.vocabSize) {
    throw new ServeError(422, 'model_load_failed', `tokenizer has ${tokenizer.vocabSize} tokens but the embedding only ${model.vocabSize} rows`);
  }
  const bytes = parameterBytes(model);
  telemetry.write('modelBytes', bytes);
  const info: LoadResult = { name: source.name, placement: source.placement, weights, modelType: model.modelType, bytes, loadMs: performance.now() - started, contextLength: model.contextLength, sequences: settings.maxBatch };
  const stopIds = eosIds(source.path, config, tokenizer);
  const grammars = new GrammarConstraints(tokenizer, model.vocabSize, stopIds);
  loaded = { source, promptCache: new PromptCache(settings.promptCacheBytes), model, tokenizer, eosIds: stopIds, grammars, info };
  collectGarbage(true);
  publishDeviceMemory(metalMemory, telemetry);
  return loaded;
}

async function generate(task: Extract<WorkerTask, { op: 'generate' }>, telemetry: Telemetry): Promise<WorkerReply> {
  const { port, request } = task;
  try {
    if (isGgufPath(task.model.path)) {
      await (await loadGguf(task.model, telemetry)).generate(request, task.slot, port, telemetry);
      return { ok: true };
    }
    await dropGguf();
    const target = load(task.model, telemetry);
    const ids = promptIdsInWorker(target.tokenizer, request.prompt, telemetry);
    validatePrompt(ids, request, target.model);
    const constraint = request.format ? await target.grammars.constraint(request.format) : null;
    await constraint?.ready();
    scheduler ??= new Scheduler(telemetry, settings);
    const sequence = new Sequence(target.model, target.tokenizer, request, ids, target.eosIds, task.slot, port, telemetry, target.promptCache.lookup(ids), constraint);
    await scheduler.run(sequence);
    target.promptCache.store(sequence.tokens, sequence.cache);
    publishDeviceMemory(metalMemory, telemetry);
    return { ok: true };
  } catch (error) {
    const shape = ServeError.from(error).toShape();
    port.postMessage({ type: 'error', error: shape });
    port.close();
    return { ok: false, error: shape };
  }
}

function reply(work: () => WorkerReply): WorkerReply {
  try {
    return work();
  } catch (error) {
    return { ok: false, error: ServeError.from(error).toShape() };
  }
}

export default async function handle(task: WorkerTask): Promise<WorkerReply> {
  switch (task.op) {
    case 'check':
      return reply(() => {
        const telemetry = new Telemetry(task.telemetry);
        configureDeviceMemory(metalMemory, settings, telemetry);
        checkRuntime();
        collectGarbage(true);
        if (metalMemory.gpu) setInterval(() => publishDeviceMemory(metalMemory, telemetry), DEVICE_SAMPLE_MS).unref();
        return { ok: true };
      });
    case 'load': {
      const telemetry = new Telemetry(task.telemetry);
      if (isGgufPath(task.model.path)) {
        try {
          return { ok: true, load: (await loadGguf(task.model, telemetry)).info };
        } catch (error) {
          return { ok: false, error: ServeError.from(error).toShape() };
        }
      }
      await dropGguf();
      return reply(() => ({ ok: true, load: load(task.model, telemetry).info }));
    }
    case 'generate':
      return generate(task, new Telemetry(task.telemetry));
    case 'release':
      await dropGguf();
      loaded = null;
      scheduler = null;
      return { ok: true, release: await releaseDeviceMemory(metalMemory, new Telemetry(task.telemetry), () => collectGarbage(true)) };
  }
}
