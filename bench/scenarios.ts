/**
 * The scenarios a bench run drives against a server, and the raw engine run beside them.
 * Every generation is greedy with ignore_eos and a fixed max_tokens, so runs are comparable.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ApiClient, send, type ApiRoute } from '../src/client/api-client.ts';
import { FAILED_ROUND_RETRIES, recordTiming, runWholeRounds, timedGeneration, type GenerationCall, type RequestTiming } from './client.ts';
import type { Recorders } from './histograms.ts';
import { treeJiffies } from './machine.ts';
import type { BenchModel } from './models.ts';
import type { PeerSettings } from './server-process.ts';
import { distinctPrompt, promptOfWords } from './prompts.ts';
import type { WeightPlacement } from '../core/protocol.ts';
import type { RawEngineJob, RawEngineResult } from './raw-engine.ts';

export interface Progress {
  (message: string): void;
}

export interface ScenarioContext {
  baseUrl: string;
  /** The server's health route: /admin/health on ours, /health on llama-server. */
  healthPath: string;
  /** llama-server's /slots, whose per-slot last task shows which slots a round ran on; null on ours. */
  slotsPath: string | null;
  recorders: Recorders;
  progress: Progress;
  /** Child processes to stop if the bench is interrupted. */
  children: Set<ChildProcess>;
  /** Failed requests by `model/scenario`, with the first error seen. */
  failures: Record<string, { count: number; firstError: string }>;
}

export const SHORT = 'short';
export const LONG = 'long';
/** The server scenario the raw engine is compared with: same prompt, same route shape as a plain completion. */
export const STREAM_SHORT = 'openai-completions.stream.short';
export const STREAM_LONG = 'openai-completions.stream.long';
export const RAW_SHORT = 'raw.short';
export const RAW_LONG = 'raw.long';
export const HEALTH_WHILE_GENERATING = 'admin-health.while-generating';
export const sweepScenario = (clients: number): string => `sweep.c${clients}`;
export const pairedSweepScenario = (clients: number): string => `paired.c${clients}`;
export const PAIRED_HEALTH = 'paired.health-while-generating';

async function attempt<T>(ctx: ScenarioContext, model: string, scenario: string, job: () => Promise<T>): Promise<T | null> {
  try {
    return await job();
  } catch (error) {
    const key = `${model}/${scenario}`;
    const message = (error as Error).message;
    const entry = (ctx.failures[key] ??= { count: 0, firstError: message });
    entry.count++;
    if (entry.count === 1) ctx.progress(`  ! ${key} failed: ${message.slice(0, 200)}`);
    return null;
  }
}

const seconds = (t: RequestTiming): number => (t.endedAt - t.startedAt) / 1000;

/** Returns the prompt's length in tokens as the server counted it, when any request succeeded. */
async function sequential(ctx: ScenarioContext, model: BenchModel, scenario: string, call: GenerationCall, repeats: number): Promise<number | null> {
  let promptTokens: number | null = null;
  for (let i = 0; i < repeats; i++) {
    const timing = await attempt(ctx, model.label, scenario, () => timedGeneration(ctx.baseUrl, { ...call, prompt: distinctPrompt(call.prompt) }));
    if (!timing) continue;
    recordTiming(ctx.recorders, model.label, scenario, timing);
    promptTokens = timing.promptTokens;
    const ttft = timing.chunkTimes[0] === undefined ? '' : `, ttft ${(timing.chunkTimes[0] - timing.startedAt).toFixed(1)} ms`;
    ctx.progress(`  ${scenario} ${i + 1}/${repeats}: ${timing.promptTokens}+${timing.completionTokens} tokens, ${(timing.completionTokens / seconds(timing)).toFixed(1)} tok/s${ttft}`);
  }
  return promptTokens;
}

const HEALTH_POLL_GAP_MS = 10;

/** Polls `healthUrl` back to back, HEALTH_POLL_GAP_MS apart, until `until` settles. */
async function pollHealthUntil(ctx: ScenarioContext, model: string, healthUrl: string, until: Promise<unknown>, scenario: string): Promise<void> {
  let done = false;
  void until.finally(() => (done = true));
  while (!done) {
    const started = performance.now();
    const reply = await attempt(ctx, model, scenario, () => send(healthUrl, 'GET'));
    if (reply?.status === 200) ctx.recorders.record(model, scenario, 'latency', performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_GAP_MS));
  }
}

/** A server a sweep round runs on, with the name and label its model is served and recorded under. */
export interface SweepSide {
  baseUrl: string;
  healthPath: string;
  slotsPath: string | null;
  model: string;
  label: string;
}

const sideOf = (ctx: ScenarioContext, model: BenchModel): SweepSide => ({ baseUrl: ctx.baseUrl, healthPath: ctx.healthPath, slotsPath: ctx.slotsPath, model: model.name, label: model.label });

/** Each llama-server slot's last task id, by slot id; null when the route does not answer so. */
async function slotTasks(url: string): Promise<Map<number, number> | null> {
  const reply = await send(url, 'GET').catch(() => null);
  if (reply?.status !== 200) return null;
  let slots: unknown;
  try {
    slots = JSON.parse(reply.body);
  } catch {
    return null;
  }
  if (!Array.isArray(slots)) return null;
  return new Map(slots.flatMap((slot: { id?: unknown; id_task?: unknown }) => (typeof slot.id === 'number' && typeof slot.id_task === 'number' ? [[slot.id, slot.id_task] as [number, number]] : [])));
}

/**
 * How many runs of consecutive ids `ids` make: llama.cpp decodes each run of sequence ids in a
 * batch as a forward pass of its own, so llama-server's rounds on slots {0,1,14,15} (2 runs) took
 * 52 ms a token where {4,5,6,7} took 28.7.
 */
export function idRuns(ids: readonly number[]): number {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  return sorted.filter((id, i) => i === 0 || id !== sorted[i - 1]! + 1).length;
}

/** ", slots 0,1,14,15 (2 runs of ids)": the slots whose last task changed between two readings. */
function slotsLine(before: Map<number, number> | null, after: Map<number, number> | null): string {
  if (!before || !after) return '';
  const used = [...after].filter(([id, task]) => before.get(id) !== task).map(([id]) => id).sort((a, b) => a - b);
  const runs = idRuns(used);
  return used.length === 0 ? '' : `, slots ${used.join(',')} (${runs} run${runs === 1 ? '' : 's'} of ids)`;
}

/**
 * One round of a sweep level: `clients` streaming requests at once on `side`; its aggregate tok/s
 * is one sample, taken only when every request succeeded (it says whether they did, and
 * runWholeRounds runs a failed round again). At the workload's health level, the side's health
 * route is polled while the requests run.
 */
async function sweepRound(ctx: ScenarioContext, side: SweepSide, workload: BenchModel['workload'], clients: number, prompt: string, names: { scenario: string; health: string; round: string }): Promise<boolean> {
  const slotsBefore = side.slotsPath ? await slotTasks(side.baseUrl + side.slotsPath) : null;
  const started = performance.now();
  const call: GenerationCall = { route: 'openai-completions', model: side.model, prompt, maxTokens: workload.sweepMaxTokens, stream: true };
  const requests = Promise.all(Array.from({ length: clients }, () => attempt(ctx, side.label, names.scenario, () => timedGeneration(side.baseUrl, { ...call, prompt: distinctPrompt(prompt) }))));
  if (clients === workload.healthClients) await pollHealthUntil(ctx, side.label, side.baseUrl + side.healthPath, requests, names.health);
  const timings = (await requests).filter((t): t is RequestTiming => t !== null);
  const wallSeconds = (performance.now() - started) / 1000;
  for (const timing of timings) recordTiming(ctx.recorders, side.label, names.scenario, timing);
  const tokens = timings.reduce((sum, t) => sum + t.completionTokens, 0);
  const whole = timings.length === clients;
  if (whole) ctx.recorders.record(side.label, names.scenario, 'aggregate_tps', tokens / wallSeconds);
  const slots = side.slotsPath ? slotsLine(slotsBefore, await slotTasks(side.baseUrl + side.slotsPath)) : '';
  ctx.progress(`  ${names.round}: ${timings.length}/${clients} ok, aggregate ${(tokens / wallSeconds).toFixed(1)} tok/s${slots}${whole ? '' : ' (run again)'}`);
  return whole;
}

/** Each level runs `sweepRounds` whole rounds on the server. */
async function concurrencySweep(ctx: ScenarioContext, model: BenchModel, prompt: string): Promise<void> {
  const { concurrency, sweepRounds } = model.workload;
  for (const clients of concurrency) {
    const scenario = sweepScenario(clients);
    await runWholeRounds(sweepRounds, (round) =>
      sweepRound(ctx, sideOf(ctx, model), model.workload, clients, prompt, { scenario, health: HEALTH_WHILE_GENERATING, round: `${scenario} round ${round + 1}/${sweepRounds}` }),
    );
  }
}

/**
 * The pause before each round in turn. llama.cpp's CPU threads spin for new work a while after
 * a batch (ggml's default poll; ~0.1 s of a core on our server here), on llama-server and on our
 * kept pool alike: a side whose round came right after the other's read ~10% slower (one stream:
 * llama-server 67 tok/s after ours against 74 first; ours 62 against 70).
 */
const PAIRED_SETTLE_MS = 1000;

/** The two sides of a round in the order they run: the first of them goes first in even rounds. */
export const inTurn = <T>(round: number, sides: readonly [T, T]): readonly T[] => (round % 2 === 0 ? sides : [sides[1], sides[0]]);

/**
 * The sweep on our server and on llama-server, both up with the same file, round by round in
 * turn (and which of them goes first alternates): a machine whose speed drifts over the minutes
 * of a run (others' load, the host's) then weighs on both alike, where the per-server sweeps run
 * minutes apart. The comparison's throughput, time to first token (the one-stream rounds) and
 * health p99 come from these rounds.
 */
export async function pairedSweep(ctx: ScenarioContext, sides: readonly [SweepSide, SweepSide], workload: BenchModel['workload'], prompt: string): Promise<void> {
  for (const clients of workload.concurrency) {
    const scenario = pairedSweepScenario(clients);
    // Each side has the retries of one level, as in its own sweep (llama-server fails a request in most 16-stream rounds of the F32 model).
    const failed = new Map<SweepSide, number>(sides.map((side) => [side, 0]));
    for (let round = 0; round < workload.sweepRounds; round++) {
      for (const side of inTurn(round, sides)) {
        const retriesLeft = FAILED_ROUND_RETRIES - (failed.get(side) ?? 0);
        if (retriesLeft < 0) continue;
        await new Promise((resolve) => setTimeout(resolve, PAIRED_SETTLE_MS));
        const names = { scenario, health: PAIRED_HEALTH, round: `${scenario} round ${round + 1}/${workload.sweepRounds} on ${side.label}` };
        failed.set(side, (failed.get(side) ?? 0) + (await runWholeRounds(1, () => sweepRound(ctx, side, workload, clients, prompt, names), retriesLeft)));
      }
    }
  }
}

export const NEWCOMER_ALONE = 'newcomer.alone';
export const newcomerScenario = (decoding: number): string => `newcomer.with-${decoding}-decoding`;
export const healthUnderLoadScenario = (decoding: number): string => `admin-health.while-${decoding}-decode`;

/**
 * The time to first token of a newcomer, alone and then arriving while `busy` streams (the
 * sweep's largest level less one) are decoding; and GET /admin/health while those streams and
 * the newcomer decode together. The busy streams ask for enough tokens to outlast both.
 */
export async function newcomerAndHealthUnderLoad(ctx: ScenarioContext, model: BenchModel, prompt: string): Promise<void> {
  const { concurrency, repeats, maxTokens } = model.workload;
  const busy = Math.max(...concurrency) - 1;
  if (busy < 1) return;
  const newcomer: GenerationCall = { route: 'openai-completions', model: model.name, prompt, maxTokens, stream: true };
  await sequential(ctx, model, NEWCOMER_ALONE, newcomer, repeats);
  const admin = new ApiClient(ctx.baseUrl);
  const generated = async (): Promise<number> => (await admin.status()).tokens.generated;
  for (let round = 0; round < repeats; round++) {
    const before = await generated();
    const streams = Promise.all(
      Array.from({ length: busy }, () => attempt(ctx, model.label, 'newcomer.busy-streams', () => timedGeneration(ctx.baseUrl, { ...newcomer, prompt: distinctPrompt(prompt), maxTokens: maxTokens * 8 }))),
    );
    // Every busy stream is decoding once the server has generated a few tokens for each.
    while ((await generated()) - before < busy * 3) await new Promise((resolve) => setTimeout(resolve, 20));
    const arrival = attempt(ctx, model.label, newcomerScenario(busy), () => timedGeneration(ctx.baseUrl, { ...newcomer, prompt: distinctPrompt(prompt) }));
    await pollHealthUntil(ctx, model.label, ctx.baseUrl + ctx.healthPath, arrival, healthUnderLoadScenario(busy + 1));
    const timing = await arrival;
    await streams;
    if (timing) recordTiming(ctx.recorders, model.label, newcomerScenario(busy), timing);
    const ttft = timing?.chunkTimes[0] === undefined ? '?' : (timing.chunkTimes[0] - timing.startedAt).toFixed(1);
    ctx.progress(`  ${newcomerScenario(busy)} ${round + 1}/${repeats}: ttft ${ttft} ms`);
  }
}

export interface ModelRunInfo {
  name: string;
  label: string;
  /** How the server held the weights (GET /admin/status); null when it does not say. */
  placement: WeightPlacement | null;
  loadSeconds: number | null;
  routes: ApiRoute[];
  workload: BenchModel['workload'];
  /** Prompt lengths in tokens as the server counted them (completions route, no chat template). */
  promptTokens: { short: number | null; long: number | null };
  /** What the server reported it runs with (GET /admin/status); null for llama-server, which is started with ours. */
  settings: PeerSettings | null;
}

/** Which Ollama routes this server has: a one-token request answers 200 only where the route exists. */
async function availableRoutes(baseUrl: string, model: string): Promise<ApiRoute[]> {
  const routes: ApiRoute[] = ['openai-completions', 'openai-chat'];
  for (const route of ['ollama-generate', 'ollama-chat'] as const) {
    try {
      await timedGeneration(baseUrl, { route, model, prompt: 'hi', maxTokens: 1, stream: false });
      routes.push(route);
    } catch {
      // not served (404) or not compatible: the scenarios on it are skipped
    }
  }
  return routes;
}

/** Single streams on each route (short prompt), the long prompt, then the concurrency sweep. */
async function measureGenerations(ctx: ScenarioContext, model: BenchModel, routes: readonly ApiRoute[]): Promise<ModelRunInfo['promptTokens']> {
  const { workload } = model;
  const short = promptOfWords(workload.shortPromptWords);
  const long = promptOfWords(workload.longPromptWords);
  const base = { model: model.name, maxTokens: workload.maxTokens };
  await attempt(ctx, model.label, 'warm-up', () => timedGeneration(ctx.baseUrl, { ...base, route: 'openai-completions', prompt: short, stream: true, maxTokens: 2 }));
  const promptTokens: ModelRunInfo['promptTokens'] = { short: null, long: null };
  for (const route of routes) {
    for (const stream of [true, false]) {
      const scenario = `${route}.${stream ? 'stream' : 'nostream'}.${SHORT}`;
      const counted = await sequential(ctx, model, scenario, { ...base, route, prompt: short, stream }, workload.repeats);
      if (scenario === STREAM_SHORT) promptTokens.short = counted;
    }
  }
  promptTokens.long = await sequential(ctx, model, STREAM_LONG, { ...base, route: 'openai-completions', prompt: long, stream: true }, workload.repeats);
  await concurrencySweep(ctx, model, short);
  return promptTokens;
}

export async function runServerScenarios(ctx: ScenarioContext, model: BenchModel): Promise<ModelRunInfo> {
  ctx.progress(`${model.label}: loading on the server`);
  const admin = new ApiClient(ctx.baseUrl);
  const loaded = await admin.load(model.name);
  const routes = await availableRoutes(ctx.baseUrl, model.name);
  const status = await admin.status();
  const placement = status.model.weights?.placement ?? null;
  const contextPerSequence = status.model.context_length;
  const parallel = status.config.max_batch;
  ctx.progress(`${model.label}: loaded in ${loaded.load_seconds} s, weights ${placement ?? '?'}, context ${contextPerSequence ?? '?'} per sequence; routes: ${routes.join(', ')}`);
  const promptTokens = await measureGenerations(ctx, model, model.workload.allRoutes ? routes : ['openai-completions']);
  await newcomerAndHealthUnderLoad(ctx, model, promptOfWords(model.workload.shortPromptWords));
  await admin.unload();
  const settings = contextPerSequence && parallel ? { contextPerSequence, parallel } : null;
  return { name: model.name, label: model.label, placement, loadSeconds: loaded.load_seconds, routes, workload: model.workload, promptTokens, settings };
}

/**
 * The same generations against llama-server (already started on the model's file, with `ours`
 * serving it too): OpenAI completions only; then the sweep on both in turn (pairedSweep), with
 * our model loaded again for it.
 */
export async function runPeerScenarios(ctx: ScenarioContext, model: BenchModel, startSeconds: number, ours: SweepSide): Promise<ModelRunInfo> {
  ctx.progress(`${model.label}: llama-server up in ${startSeconds.toFixed(1)} s`);
  const routes: ApiRoute[] = ['openai-completions'];
  const promptTokens = await measureGenerations(ctx, model, routes);
  const admin = new ApiClient(ours.baseUrl);
  await admin.load(ours.model);
  ctx.progress(`${ours.label} and ${model.label}: the sweep in turn`);
  await pairedSweep(ctx, [ours, sideOf(ctx, model)], model.workload, promptOfWords(model.workload.shortPromptWords));
  await admin.unload();
  return { name: model.name, label: model.label, placement: null, loadSeconds: startSeconds, routes, workload: model.workload, promptTokens, settings: null };
}

const RAW_ENGINE = fileURLToPath(new URL('./raw-engine.ts', import.meta.url));

/** Runs the raw engine in a child process, as the server's worker would run, and records its timings. */
export async function runRawEngine(ctx: ScenarioContext, model: BenchModel & { path: string }, builtin: boolean, placement: WeightPlacement): Promise<{ result: RawEngineResult; openblasCore: string | null }> {
  const { workload } = model;
  const job: RawEngineJob = {
    path: model.path,
    placement,
    builtin,
    prompts: [
      { label: SHORT, text: promptOfWords(workload.shortPromptWords) },
      { label: LONG, text: promptOfWords(workload.longPromptWords) },
    ],
    maxTokens: workload.maxTokens,
    repeats: workload.repeats,
  };
  ctx.progress(`${model.label}: raw engine (no server), weights ${placement}`);
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), '--expose-gc', RAW_ENGINE, JSON.stringify(job)], {
    env: { ...process.env, OPENBLAS_VERBOSE: '2', MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  ctx.children.add(child);
  child.on('exit', () => ctx.children.delete(child));
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    for (const line of chunk.toString().split('\n')) if (line.startsWith('raw ')) ctx.progress(`  ${line}`);
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  const resultLine = stdout.split('\n').filter((line) => line.startsWith('{')).at(-1);
  if (code !== 0 || !resultLine) throw new Error(`raw engine exited with ${code}: ${stderr.slice(-2000)}`);
  const result = JSON.parse(resultLine) as RawEngineResult;
  for (const [label, timings] of Object.entries(result.timings)) for (const timing of timings) recordTiming(ctx.recorders, model.label, `raw.${label}`, timing);
  return { result, openblasCore: /Core: (\S+)/.exec(stdout + stderr)?.[1] ?? null };
}

export interface FrontEndResult {
  path: string;
  connections: number;
  seconds: number;
  requests: number;
  errors: number;
  /** CPU time over wall time, in percent of one core: near 100 for the client means it, not the server, was the limit. */
  clientCpuPercent: number;
  serverCpuPercent: number | null;
}

/** Many keep-alive connections hammering a route that does no model work. */
export async function frontEndCost(ctx: ScenarioContext, path: string, connections: number, durationMs: number, serverPid: number | null): Promise<FrontEndResult> {
  const scenario = `frontend.${path}`;
  const windowMs = 500;
  const started = performance.now();
  const deadline = started + durationMs;
  const cpuBefore = process.cpuUsage();
  const serverBefore = serverPid === null ? 0 : treeJiffies(serverPid);
  const windows: number[] = [];
  let requests = 0;
  let errors = 0;
  const client = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const sent = performance.now();
      try {
        const reply = await send(ctx.baseUrl + path, 'GET');
        if (reply.status !== 200) throw new Error(`HTTP ${reply.status}`);
      } catch {
        errors++;
        continue;
      }
      const now = performance.now();
      ctx.recorders.record('server', scenario, 'latency', now - sent);
      const window = Math.floor((now - started) / windowMs);
      windows[window] = (windows[window] ?? 0) + 1;
      requests++;
    }
  };
  await Promise.all(Array.from({ length: connections }, client));
  const wallMs = performance.now() - started;
  const fullWindows = Math.floor(durationMs / windowMs);
  for (let i = 0; i < fullWindows; i++) ctx.recorders.record('server', scenario, 'requests_per_s', (windows[i] ?? 0) * (1000 / windowMs));
  const cpu = process.cpuUsage(cpuBefore);
  const jiffiesPerSecond = 100;
  const serverCpuPercent = serverPid === null ? null : Math.round((((treeJiffies(serverPid) - serverBefore) / jiffiesPerSecond) / (wallMs / 1000)) * 1000) / 10;
  const result = { path, connections, seconds: wallMs / 1000, requests, errors, clientCpuPercent: Math.round(((cpu.user + cpu.system) / 1000 / wallMs) * 1000) / 10, serverCpuPercent };
  ctx.progress(`  ${scenario}: ${(requests / (wallMs / 1000)).toFixed(0)} req/s over ${connections} connections, client CPU ${result.clientCpuPercent}%, server CPU ${serverCpuPercent ?? '?'}%`);
  return result;
}
