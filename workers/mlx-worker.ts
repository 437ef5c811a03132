/**
 * The Piscina entry: the one thread that owns node-mlx and the loaded model. It knows nothing
 * of HTTP; it takes load and generate tasks and streams tokens back on a port per request.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import type { LoadResult, LoadSpec, WorkerData, WorkerReply, WorkerTask } from '../core/protocol.ts';
import { CancelFlags } from '../core/cancel-flags.ts';
import { ServeError } from '../core/errors.ts';
import { configureDeviceMemory, publishDeviceMemory, releaseDeviceMemory } from '../core/device-memory.ts';
import { collectGarbage } from '../core/gc.ts';
import { Telemetry } from '../core/telemetry.ts';
import { GrammarConstraints } from './constraints/grammar.ts';
import { materializeDefaultModel } from './default-model.ts';
import type { LanguageModel } from './architectures/decoder.ts';
import { metalMemory } from './metal-memory.ts';
import { loadModel, parameterBytes, type ModelConfig } from './architectures/loader.ts';
import { readJson } from '../core/model-folder.ts';
import { promptIdsInWorker, validatePrompt } from './prompt.ts';
import { PromptCache } from './prompt-cache.ts';
import { isGgufPath } from '../core/gguf/format.ts';
import { LlamaEngine } from './llama-engine.ts';
import { lowerEngineThreads } from './engine-priority.ts';
import { checkRuntime } from './runtime-check.ts';
import { Scheduler } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { ModelTokenizer } from './tokenizer.ts';

const shared = workerData as WorkerData;
const { settings } = shared;
const telemetry = new Telemetry(shared.telemetry);
const cancelFlags = new CancelFlags(shared.cancelFlags);

interface LoadedModel {
  promptCache: PromptCache;
  model: LanguageModel;
  tokenizer: ModelTokenizer;
  eosIds: Set<number>;
  grammars: GrammarConstraints;
  info: LoadResult;
}

/**
 * The model this worker loaded: the engine loads one per worker's life (a switch or an unload
 * ends the worker), in its lifecycle queue, before it sends any generation. An MLX model, or a
 * GGUF model served by llama.cpp.
 */
let loaded: LoadedModel | null = null;
let gguf: LlamaEngine | null = null;
let scheduler: Scheduler | null = null;

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

function load(source: LoadSpec): LoadedModel {
  const started = performance.now();
  if (source.builtin) materializeDefaultModel(source.path);
  const { model, config, weights } = loadModel(source.path, source.placement);
  const tokenizer = new ModelTokenizer(source.path);
  if (tokenizer.vocabSize > model.vocabSize) {
    throw new ServeError('model_load_failed', `tokenizer has ${tokenizer.vocabSize} tokens but the embedding only ${model.vocabSize} rows`);
  }
  const bytes = parameterBytes(model);
  telemetry.write('modelBytes', bytes);
  const info: LoadResult = { name: source.name, placement: source.placement, weights, modelType: model.modelType, bytes, loadMs: performance.now() - started, contextLength: model.contextLength, sequences: settings.maxBatch };
  const stopIds = eosIds(source.path, config, tokenizer);
  const grammars = new GrammarConstraints(tokenizer, model.vocabSize, stopIds);
  loaded = { promptCache: new PromptCache(settings.promptCacheBytes), model, tokenizer, eosIds: stopIds, grammars, info };
  collectGarbage(true);
  publishDeviceMemory(metalMemory, telemetry);
  return loaded;
}

async function generate({ request, slot, port }: Extract<WorkerTask, { op: 'generate' }>): Promise<WorkerReply> {
  try {
    if (gguf) {
      await gguf.generate(request, slot, port, telemetry, cancelFlags);
      return { ok: true };
    }
    // The engine loads before it generates; a worker without a model is one Piscina started again after a crash.
    if (!loaded) throw new ServeError('worker_failed', 'the worker holds no model (it was restarted); the next request reloads it');
    const target = loaded;
    const ids = promptIdsInWorker(target.tokenizer, request.prompt, telemetry);
    validatePrompt(ids, request, target.model);
    const constraint = request.format ? await target.grammars.constraint(request.format) : null;
    await constraint?.ready();
    scheduler ??= new Scheduler(telemetry, cancelFlags, settings);
    const sequence = new Sequence(target.model, target.tokenizer, request, ids, target.eosIds, slot, port, telemetry, target.promptCache.lookup(ids), constraint);
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
        lowerEngineThreads(settings.engineNice);
        configureDeviceMemory(metalMemory, settings, telemetry);
        checkRuntime();
        collectGarbage(true);
        if (metalMemory.gpu) setInterval(() => publishDeviceMemory(metalMemory, telemetry), DEVICE_SAMPLE_MS).unref();
        return { ok: true };
      });
    case 'load':
      if (isGgufPath(task.model.path)) {
        try {
          gguf = await LlamaEngine.load(task.model, telemetry, settings.threadPoolAddon);
          return { ok: true, load: gguf.info };
        } catch (error) {
          return { ok: false, error: ServeError.from(error).toShape() };
        }
      }
      return reply(() => ({ ok: true, load: load(task.model).info }));
    case 'generate':
      return generate(task);
    case 'release':
      await gguf?.dispose();
      gguf = null;
      loaded = null;
      scheduler = null;
      return { ok: true, release: await releaseDeviceMemory(metalMemory, telemetry, () => collectGarbage(true)) };
  }
}
