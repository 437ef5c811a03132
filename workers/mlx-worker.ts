/**
 * The Piscina entry: the one thread that owns node-mlx and the loaded model. It knows nothing
 * of HTTP; it takes load and generate tasks and streams tokens back on a port per request.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import type { GenerationRequest, LoadResult, LoadSpec, WorkerReply, WorkerSettings, WorkerTask } from '../src/engine/protocol.ts';
import { ServeError } from '../src/errors.ts';
import { configureDeviceMemory, publishDeviceMemory, releaseDeviceMemory } from '../src/runtime/device-memory.ts';
import { collectGarbage } from '../src/runtime/gc.ts';
import { Telemetry } from '../src/telemetry/layout.ts';
import { GrammarConstraints } from './constraints/grammar.ts';
import { materializeDefaultModel } from './default-model.ts';
import type { LanguageModel } from './models/decoder.ts';
import { metalMemory } from './metal-memory.ts';
import { loadModel, parameterBytes, readJson, type ModelConfig } from './models/loader.ts';
import { PromptCache } from './prompt-cache.ts';
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
  const info: LoadResult = { name: source.name, placement: source.placement, weights, modelType: model.modelType, bytes, loadMs: performance.now() - started, contextLength: model.contextLength };
  const stopIds = eosIds(source.path, config, tokenizer);
  const grammars = new GrammarConstraints(tokenizer, model.vocabSize, stopIds);
  loaded = { source, promptCache: new PromptCache(settings.promptCacheBytes), model, tokenizer, eosIds: stopIds, grammars, info };
  collectGarbage(true);
  publishDeviceMemory(metalMemory, telemetry);
  return loaded;
}

function promptIds(target: LoadedModel, request: GenerationRequest): number[] {
  const { prompt } = request;
  switch (prompt.kind) {
    case 'tokens':
      return prompt.ids;
    case 'text':
      return target.tokenizer.encode(prompt.text, prompt.addSpecialTokens);
    case 'chat':
      return target.tokenizer.encode(target.tokenizer.applyChatTemplate(prompt.messages, prompt.tools, prompt.templateArgs), false);
  }
}

function validate(target: LoadedModel, request: GenerationRequest, ids: number[]): void {
  const { contextLength, vocabSize } = target.model;
  if (ids.length === 0) throw new ServeError(400, 'invalid_request', 'the prompt is empty after tokenization', 'prompt');
  const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
  if (bad !== undefined) throw new ServeError(400, 'invalid_request', `token id ${bad} is outside the vocabulary (0..${vocabSize - 1})`, 'prompt');
  const asked = typeof request.maxTokens === 'number' ? request.maxTokens : 1;
  const wanted = ids.length + asked;
  if (wanted > contextLength) {
    throw new ServeError(
      400,
      'context_length_exceeded',
      `this model's maximum context length is ${contextLength} tokens, but the request needs ${wanted} (${ids.length} in the prompt, ${asked} to generate)`,
      'messages',
    );
  }
}

async function generate(task: Extract<WorkerTask, { op: 'generate' }>, telemetry: Telemetry): Promise<WorkerReply> {
  const { port, request } = task;
  try {
    const target = load(task.model, telemetry);
    const ids = promptIds(target, request);
    validate(target, request, ids);
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
    case 'load':
      return reply(() => ({ ok: true, load: load(task.model, new Telemetry(task.telemetry)).info }));
    case 'generate':
      return generate(task, new Telemetry(task.telemetry));
    case 'release':
      loaded = null;
      scheduler = null;
      return { ok: true, release: await releaseDeviceMemory(metalMemory, new Telemetry(task.telemetry), () => collectGarbage(true)) };
  }
}
