/**
 * `npm run bench`: measures a server (one it starts, or --url) and the raw engine beside it,
 * writes bench/results/<host>-<time>.json and .html, and with --compare judges the run
 * against a baseline. See bench/README.md.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseServerConfig } from '../src/config.ts';
import { BUILTIN_MODEL, ModelRegistry } from '../src/models/registry.ts';
import { agent } from '../src/client/api-client.ts';
import { compareResults, formatComparison } from './compare.ts';
import { Recorders } from './histograms.ts';
import { renderHtml } from './html.ts';
import { fingerprint, LoadMonitor } from './machine.ts';
import { benchModelsDir, FP32_05B, generatedModel, GGUF_TYPES, ggufModel, makeModel, PEER_WORKLOAD, Q4_05B, QUICK_PEER_WORKLOAD, workloadFor, type BenchModel } from './models.ts';
import { efficiencyRows, peerComparisons, readResult, RESULT_SCHEMA, writeResult, type BenchResult } from './result.ts';
import { frontEndCost, runPeerScenarios, runRawEngine, runServerScenarios, sweepScenario, type ModelRunInfo, type ScenarioContext } from './scenarios.ts';
import { startBenchServer, startLlamaServer, type BenchServer } from './server-process.ts';
import { mappedGgmlCpuLibrary, sameCpuLibraryEnv } from './peers/same-cpu.ts';

const USAGE = `usage: npm run bench -- [options]

  --quick             the built-in tiny model only, small counts (under 2 minutes; CI's smoke run)
  --url URL           measure a running server instead of starting one
  --model NAME|PATH   measure this model instead of the default set (tiny-qwen3, ${FP32_05B}, ${Q4_05B})
  --cache-dir DIR     where the built-in and the bench's generated models live (default: the server's)
  --out DIR           where result files go (default bench/results)
  --no-raw            skip the raw-engine baseline
  --peer llama-server the llama.cpp comparison instead of the default set: ${FP32_05B} as MLX, as GGUF F32 and Q4_0
                      through our server, and the GGUF files through llama.cpp's llama-server (with --quick: tiny-qwen3)
                      (with --model NAME, only that one of the three, e.g. qwen2.5-0.5b-shape.Q4_0)
  --peer-binary PATH  the llama-server to run (default: bench/peers/build-llama-server.sh builds it once, a long build)
  --compare FILE      judge this run (or --current FILE) against the baseline FILE; exit 1 on a regression
  --current FILE      with --compare: compare an existing result instead of running
`;

const started = performance.now();
let monitor: LoadMonitor | null = null;
const progress = (message: string): void => {
  const others = monitor?.latestOthersBusy;
  const load = others === null || others === undefined ? '' : ` [others ${others}% CPU]`;
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)}s]${load} ${message}\n`);
};

const PEER_LLAMA_SERVER = 'llama-server';
const BUILD_LLAMA_SERVER = fileURLToPath(new URL('./peers/build-llama-server.sh', import.meta.url));

/** The same weights as MLX fp32, GGUF F32 and GGUF Q4_0, all at one workload so they compare. */
function peerModels(quick: boolean, cacheDir: string): BenchModel[] {
  const workload = quick ? QUICK_PEER_WORKLOAD : PEER_WORKLOAD;
  const source = quick ? { ...builtinModel(cacheDir, quick), workload } : { ...generatedModel(FP32_05B, cacheDir, false), workload };
  const path = source.path as string;
  return [source, ...GGUF_TYPES.map((type) => ggufModel({ ...source, path }, type, cacheDir, workload))];
}

/** With --peer, --model measures one of the set (its name as the bench lists it), not all three. */
function choosePeerModels(set: BenchModel[], requested: string | undefined): BenchModel[] {
  if (!requested) return set;
  const chosen = set.filter((model) => model.name === requested);
  if (chosen.length === 0) throw new Error(`--peer with --model: one of ${set.map((model) => model.name).join(', ')}`);
  return chosen;
}

const builtinModel = (cacheDir: string, quick: boolean): BenchModel => ({ name: BUILTIN_MODEL, label: BUILTIN_MODEL, serverWeights: null, path: join(cacheDir, BUILTIN_MODEL), engine: 'mlx', generated: null, workload: workloadFor(BUILTIN_MODEL, quick) });

async function chooseModels(requested: string | undefined, quick: boolean, cacheDir: string): Promise<BenchModel[]> {
  if (!requested) {
    const tiny = builtinModel(cacheDir, quick);
    if (quick) return [tiny];
    // 4-bit twice: as the server holds it by default on a CPU (dequantized to fp32), and with its native 4-bit kernels
    return [tiny, generatedModel(FP32_05B, cacheDir, false), generatedModel(Q4_05B, cacheDir, false), generatedModel(Q4_05B, cacheDir, false, 'native')];
  }
  if (requested === FP32_05B || requested === Q4_05B) return [generatedModel(requested, cacheDir, quick)];
  const registry = await ModelRegistry.open({ model: requested, modelsDirs: [benchModelsDir(cacheDir)], cacheDir });
  registry.close();
  const name = registry.defaultName;
  let path: string | null = null;
  try {
    path = registry.resolve(name).path;
  } catch {
    // known only to a remote server (--url): measured without the raw engine
  }
  const engine = path?.endsWith('.gguf') ? 'llama.cpp' : 'mlx';
  return [{ name, label: name, serverWeights: null, path, engine, generated: null, workload: workloadFor(name, quick) }];
}

function summary(result: BenchResult): string {
  const lines = ['', `machine: ${result.fingerprint.cpuModel}, ${result.fingerprint.cores} cores, ${result.fingerprint.memoryGiB} GiB, ${result.fingerprint.os}, Node ${result.fingerprint.node}, OpenBLAS core ${result.fingerprint.openblasCore ?? '?'}`];
  lines.push(result.load.busy ? `BUSY MACHINE: ${result.load.busyReasons.join('; ')}` : `load: others used ${result.load.during.othersBusyMean}% of the CPUs on average (quiet enough)`);
  for (const e of result.efficiency) {
    lines.push(`${e.model} ${e.prompt}: server ${e.serverTokensPerSecond.toFixed(1)} tok/s vs raw ${e.rawTokensPerSecond.toFixed(1)} (x${e.throughputRatio}), TTFT ${e.serverTtftMs.toFixed(1)} vs ${e.rawTtftMs.toFixed(1)} ms (+${e.ttftOverheadMs.toFixed(1)} ms)`);
  }
  for (const model of result.models) {
    const levels = model.workload.concurrency.map((c) => {
      const h = result.histograms.find((x) => x.model === model.label && x.scenario === sweepScenario(c) && x.metric === 'aggregate_tps');
      return `${c}: ${h ? h.percentiles.p50.toFixed(1) : '-'}`;
    });
    lines.push(`${model.label} (weights ${model.placement ?? '?'}) aggregate tok/s by clients: ${levels.join(', ')}`);
  }
  for (const p of result.peers) {
    const throughput = p.throughput.map((t) => `${t.clients}: ${t.ours.toFixed(1)}/${t.peer.toFixed(1)} (x${t.ratio})`).join(', ');
    const ttft = p.ttft ? `TTFT ${p.ttft.oursMs.toFixed(1)} vs ${p.ttft.peerMs.toFixed(1)} ms (${p.ttft.differenceMs >= 0 ? '+' : ''}${p.ttft.differenceMs.toFixed(1)})` : 'TTFT -';
    const health = p.healthP99 ? `health p99 at ${p.healthP99.clients} streams ${p.healthP99.oursMs.toFixed(2)} vs ${p.healthP99.peerMs.toFixed(2)} ms (x${p.healthP99.ratio})` : 'health -';
    lines.push(`${p.model} ours vs ${p.peer}, rounds in turn: aggregate tok/s by clients ${throughput}; ${ttft}; ${health}; CPU library ${p.cpuLibrary ?? "llama-server's own build"}`);
  }
  for (const f of result.frontEnd) lines.push(`front end ${f.path}: ${(f.requests / f.seconds).toFixed(0)} req/s over ${f.connections} connections`);
  return lines.join('\n');
}

/** The llama-server binary: the one named, or the one the build script made (building it the first time). */
function llamaServerBinary(named: string | undefined): string {
  if (named) {
    if (!existsSync(named)) throw new Error(`--peer-binary ${named}: no such file`);
    return named;
  }
  progress(`llama-server: ${BUILD_LLAMA_SERVER} (builds it once from node-llama-cpp's llama.cpp source; long on few cores)`);
  return execFileSync(BUILD_LLAMA_SERVER, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
}

/**
 * The environment that runs llama-server on the libggml-cpu our server mapped (bench/peers/same-cpu.ts),
 * and that library's file name; null, with the reason printed, when llama-server runs its own build's.
 */
function sameCpuLibrary(binary: string, serverPid: number | null): { env: Record<string, string>; name: string } | null {
  const library = serverPid === null ? null : mappedGgmlCpuLibrary(serverPid);
  const env = library ? sameCpuLibraryEnv(binary, library) : null;
  if (!library || !env) {
    progress(`llama-server: on its own build's CPU library (${library ? `no libggml-base.so.0 beside ${binary}` : 'no libggml-cpu found mapped in our server'})`);
    return null;
  }
  progress(`llama-server: on ${basename(library)}, the CPU library our server runs`);
  return { env, name: basename(library) };
}

interface BenchFlags {
  quick: boolean;
  url?: string;
  model?: string;
  'cache-dir'?: string;
  'no-raw': boolean;
  peer?: string;
  'peer-binary'?: string;
}

async function bench(values: BenchFlags, out: string, argv: string[]): Promise<BenchResult> {
  const quick = values.quick;
  const cacheDir = values['cache-dir'] ?? parseServerConfig([]).cacheDir;
  const peerBinary = values.peer ? llamaServerBinary(values['peer-binary']) : null;
  const peerSet = peerBinary ? peerModels(quick, cacheDir) : null;
  const models = peerSet ? choosePeerModels(peerSet, values.model) : await chooseModels(values.model, quick, cacheDir);
  progress(`bench ${quick ? '--quick ' : ''}on ${models.map((m) => m.name).join(', ')}${peerBinary ? `, the GGUF files also through ${peerBinary}` : ''}; results to ${out}`);
  monitor = await LoadMonitor.baseline(quick ? 1000 : 3000);
  // The whole peer set, even when one of it is measured: its GGUF files are converted from its MLX folder.
  for (const model of peerSet ?? models) await makeModel(model, cacheDir, progress);
  const startedAt = new Date().toISOString();
  monitor.start();
  let server: BenchServer | null = null;
  let serverWeights: BenchModel['serverWeights'] = null;
  const requested = values.model && !models[0]?.generated ? ['--model', values.model] : [];
  const startServer = async (weights: BenchModel['serverWeights']): Promise<string> => {
    await server?.stop();
    server = await startBenchServer(['--cache-dir', cacheDir, '--models-dir', benchModelsDir(cacheDir), ...requested, ...(weights ? ['--weights', weights] : [])]);
    serverWeights = weights;
    progress(`server started at ${server.url}${weights ? ` with --weights ${weights}` : ''}`);
    return server.url;
  };
  const ctx: ScenarioContext = { baseUrl: values.url ?? (await startServer(null)), healthPath: '/admin/health', slotsPath: null, recorders: new Recorders(), progress, children: new Set(), failures: {} };
  const interrupted = (signal: NodeJS.Signals): void => {
    progress(`${signal}: stopping the server and the raw engine`);
    for (const child of ctx.children) child.kill('SIGTERM');
    void peer?.stop();
    void ((server as BenchServer | null)?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  const runs: BenchResult['models'] = [];
  const peerPairs: Parameters<typeof peerComparisons>[1] = [];
  let peer: BenchServer | null = null;
  let blasLibraries: string[] = [];
  let openblasCore: string | null = null;
  try {
    for (const model of models) {
      if (model.serverWeights && values.url) {
        progress(`${model.label}: skipped (needs a server started with --weights ${model.serverWeights})`);
        continue;
      }
      if (!values.url && model.serverWeights !== serverWeights) ctx.baseUrl = await startServer(model.serverWeights);
      const info: ModelRunInfo = await runServerScenarios(ctx, model);
      let rawEngineLoadMs: number | null = null;
      let peerRun: ModelRunInfo | null = null;
      if (peerBinary && model.engine === 'llama.cpp' && model.path && info.settings) {
        const label = `${model.label}@${PEER_LLAMA_SERVER}`;
        const ourUrl = ctx.baseUrl;
        const starting = performance.now();
        const cpuLibrary = sameCpuLibrary(peerBinary, (server as BenchServer | null)?.serverPid ?? null);
        peer = await startLlamaServer(peerBinary, model.path, info.settings, cpuLibrary?.env);
        Object.assign(ctx, { baseUrl: peer.url, healthPath: '/health', slotsPath: '/slots' });
        try {
          peerRun = await runPeerScenarios(ctx, { ...model, label }, (performance.now() - starting) / 1000, { baseUrl: ourUrl, healthPath: '/admin/health', slotsPath: null, model: model.name, label: model.label });
        } finally {
          Object.assign(ctx, { baseUrl: ourUrl, healthPath: '/admin/health', slotsPath: null });
          await peer.stop();
          peer = null;
        }
        peerPairs.push({ model: model.label, peer: label, concurrency: model.workload.concurrency, healthClients: model.workload.healthClients, cpuLibrary: cpuLibrary?.name ?? null });
      }
      if (!values['no-raw'] && model.path && model.engine === 'mlx') {
        const raw = await runRawEngine(ctx, { ...model, path: model.path }, model.name === BUILTIN_MODEL && !values.model, info.placement ?? 'native');
        rawEngineLoadMs = raw.result.loadMs;
        blasLibraries = raw.result.blasLibraries;
        openblasCore = raw.openblasCore;
      }
      runs.push({ ...info, rawEngineLoadMs });
      if (peerRun) runs.push({ ...peerRun, rawEngineLoadMs: null });
    }
    progress('front end: routes with no model work');
    const serverPid = (server as BenchServer | null)?.process.pid ?? null;
    const frontEnd = [];
    for (const path of ['/admin/health', '/v1/models']) frontEnd.push(await frontEndCost(ctx, path, 32, quick ? 1500 : 5000, serverPid));
    const finishedAt = new Date().toISOString();
    return {
      schema: RESULT_SCHEMA,
      startedAt,
      finishedAt,
      durationSeconds: (performance.now() - started) / 1000,
      fingerprint: fingerprint(blasLibraries, openblasCore),
      flags: { quick, url: values.url ?? null, models: models.map((m) => m.label), argv },
      server: { url: ctx.baseUrl, startedByBench: server !== null },
      models: runs,
      efficiency: efficiencyRows(ctx.recorders, models.map((m) => m.label)),
      peers: peerComparisons(ctx.recorders, peerPairs),
      frontEnd,
      failures: ctx.failures,
      load: monitor.stop(),
      histograms: ctx.recorders.toRecords(),
    };
  } finally {
    agent.destroy();
    await (server as BenchServer | null)?.stop();
  }
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      url: { type: 'string' },
      model: { type: 'string' },
      'cache-dir': { type: 'string' },
      out: { type: 'string' },
      'no-raw': { type: 'boolean', default: false },
      peer: { type: 'string' },
      'peer-binary': { type: 'string' },
      compare: { type: 'string' },
      current: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.current && !values.compare) throw new Error('--current needs --compare BASELINE');
  if (values.peer !== undefined && values.peer !== PEER_LLAMA_SERVER) throw new Error(`--peer ${values.peer}: the only peer is ${PEER_LLAMA_SERVER}`);
  if (values.peer && values.url) throw new Error('--peer measures its own models on servers it starts: not with --url');
  const baseline = values.compare ? readResult(values.compare) : null;
  let current: BenchResult;
  if (values.current) current = readResult(values.current);
  else {
    const out = values.out ?? fileURLToPath(new URL('./results/', import.meta.url));
    current = await bench(values, out, argv);
    const path = writeResult(current, out);
    const htmlPath = path.replace(/\.json$/, '.html');
    writeFileSync(htmlPath, renderHtml(current));
    process.stdout.write(`${summary(current)}\n\nresult: ${path}\nreport: ${htmlPath}\n`);
  }
  if (!baseline) return 0;
  const rows = compareResults(baseline, current);
  process.stdout.write(`\n${formatComparison(baseline, current, rows)}\n`);
  return rows.some((r) => r.verdict === 'REGRESSED') ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`bench: ${(error as Error).message}\n\n${USAGE}`);
    process.exit(2);
  },
);
