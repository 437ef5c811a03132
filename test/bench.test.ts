/** `npm run bench -- --quick` end to end (structure only, never speed), and --compare's verdicts. */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { runWholeRounds } from '../bench/client.ts';
import { decodeHistogram, PERCENTILE_POINTS, Recorders } from '../bench/histograms.ts';
import { peerComparisons, RESULT_SCHEMA, type BenchResult } from '../bench/result.ts';
import { ggmlCpuLibraryIn, sameCpuLibraryEnv } from '../bench/peers/same-cpu.ts';
import { idRuns, inTurn } from '../bench/scenarios.ts';
import { TEST_CACHE_DIR, tempDir } from './helpers/server.ts';

const RUN = fileURLToPath(new URL('../bench/run.ts', import.meta.url));
const BUILD_LLAMA_SERVER = fileURLToPath(new URL('../bench/peers/build-llama-server.sh', import.meta.url));
const bench = (args: string[], timeout = 240_000) => spawnSync(process.execPath, ['--import', 'tsx', RUN, ...args], { encoding: 'utf8', timeout });

t.test('--quick writes a result file and an HTML report with sane structure', async (t) => {
  const out = tempDir('bench-quick-');
  const run = bench(['--quick', '--out', out, '--cache-dir', TEST_CACHE_DIR]);
  t.equal(run.status, 0, `bench exits 0\n${run.stderr.slice(-3000)}`);
  t.match(run.stderr, /tiny-qwen3: loading on the server/, 'progress is shown while it runs');
  const files = readdirSync(out);
  const json = files.find((f) => f.endsWith('.json'));
  const html = files.find((f) => f.endsWith('.html'));
  t.ok(json && html, `one .json and one .html (${files.join(', ')})`);
  if (!json || !html) return;
  t.equal(html.replace(/\.html$/, ''), json.replace(/\.json$/, ''), 'named alike, by host and time');
  const result = JSON.parse(readFileSync(join(out, json), 'utf8')) as BenchResult;
  t.equal(result.schema, RESULT_SCHEMA);
  t.equal(result.flags.quick, true);
  t.same(result.flags.models, ['tiny-qwen3']);
  for (const field of ['cpuModel', 'cores', 'memoryGiB', 'os', 'node', 'blasLibraries', 'openblasCoretypeEnv', 'gitCommit'] as const) t.ok(field in result.fingerprint, `fingerprint has ${field}`);
  t.type(result.load.busy, 'boolean', 'load is judged');
  t.ok(result.load.before.loadavg.length === 3 && result.load.during.samples > 0, 'load before and during');
  t.same(result.failures, {}, 'no request failed');

  const keys = new Set(result.histograms.map((h) => h.key));
  for (const key of [
    'tiny-qwen3/openai-completions.stream.short/ttft',
    'tiny-qwen3/openai-completions.stream.short/itl',
    'tiny-qwen3/openai-completions.stream.short/e2e',
    'tiny-qwen3/openai-completions.stream.short/gen_tps',
    'tiny-qwen3/openai-completions.stream.long/prompt_tps',
    'tiny-qwen3/openai-completions.nostream.short/e2e',
    'tiny-qwen3/openai-chat.stream.short/ttft',
    'tiny-qwen3/raw.short/gen_tps',
    'tiny-qwen3/raw.long/ttft',
    'tiny-qwen3/sweep.c4/aggregate_tps',
    'tiny-qwen3/admin-health.while-generating/latency',
    'server/frontend./admin/health/requests_per_s',
    'server/frontend./v1/models/latency',
  ]) {
    t.ok(keys.has(key), `histogram ${key}`);
  }
  for (const h of result.histograms) {
    const p = h.percentiles;
    const ordered = [p.min, ...PERCENTILE_POINTS.map(([name]) => p[name]), p.max].every((v, i, all) => i === 0 || v >= (all[i - 1] as number));
    if (!ordered || h.count < 1) t.fail(`${h.key}: percentiles out of order or empty`, { percentiles: p, count: h.count });
    if (decodeHistogram(h.encoded).totalCount !== h.count) t.fail(`${h.key}: the encoded histogram does not decode to its count`);
  }
  t.ok(result.efficiency.some((e) => e.model === 'tiny-qwen3' && e.prompt === 'short' && e.throughputRatio > 0), 'server efficiency against the raw engine');
  t.equal(result.frontEnd.length, 2, 'front-end cost on two routes');

  const page = readFileSync(join(out, html), 'utf8');
  t.match(page, /<svg/, 'inline SVG charts');
  t.match(page, /throughput vs concurrency/);
  t.notMatch(page, /<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!www\.w3\.org)/, 'nothing loaded from elsewhere');
});

const llamaServer = spawnSync(BUILD_LLAMA_SERVER, ['--no-build'], { encoding: 'utf8' });
const notBuilt = llamaServer.status === 0 ? false : `llama-server is not built: run ${BUILD_LLAMA_SERVER} once (a long build)`;

t.test('--quick --peer llama-server: the same weights as MLX, GGUF F32 and Q4_0, the GGUF files also through llama-server', { skip: notBuilt }, async (t) => {
  const out = tempDir('bench-peer-');
  const run = bench(['--quick', '--peer', 'llama-server', '--peer-binary', llamaServer.stdout.trim(), '--no-raw', '--out', out, '--cache-dir', TEST_CACHE_DIR], 480_000);
  t.equal(run.status, 0, `bench exits 0\n${run.stderr.slice(-3000)}`);
  const json = readdirSync(out).find((f) => f.endsWith('.json'));
  if (!json) return t.fail('no result file');
  const result = JSON.parse(readFileSync(join(out, json), 'utf8')) as BenchResult;
  const failures = Object.entries(result.failures);
  t.same(failures.filter(([key]) => !key.includes('@llama-server')), [], 'no request failed on our server');
  t.ok(
    failures.every(([, failure]) => /does not match the expected Content-only format/.test(failure.firstError)),
    "llama-server's only failures are its parser's on random-weight text (see bench/client.ts)",
    { failures },
  );
  t.same(result.flags.models, ['tiny-qwen3', 'tiny-qwen3.F32', 'tiny-qwen3.Q4_0']);
  t.same(
    result.models.map((m) => m.label),
    ['tiny-qwen3', 'tiny-qwen3.F32', 'tiny-qwen3.F32@llama-server', 'tiny-qwen3.Q4_0', 'tiny-qwen3.Q4_0@llama-server'],
    'each GGUF file through ours, then through llama-server',
  );
  const ours = result.models.find((m) => m.label === 'tiny-qwen3.Q4_0');
  t.equal(ours?.placement, 'native', 'our server holds the GGUF weights as the file stores them');
  t.ok(ours?.settings && ours.settings.parallel > 1 && ours.settings.contextPerSequence > 0, 'llama-server is started with the sequence count and context our server reports');
  t.same(result.peers.map((p) => [p.model, p.peer]), [['tiny-qwen3.F32', 'tiny-qwen3.F32@llama-server'], ['tiny-qwen3.Q4_0', 'tiny-qwen3.Q4_0@llama-server']]);
  for (const peer of result.peers) {
    t.same(peer.throughput.map((x) => x.clients), [1, 4], `${peer.model}: throughput at each sweep level`);
    t.ok(peer.throughput.every((x) => x.ours > 0 && x.peer > 0 && Math.abs(x.ratio - x.ours / x.peer) < 0.001), `${peer.model}: ratios are ours over llama-server's`);
    t.ok(peer.ttft && peer.ttft.oursMs > 0 && peer.ttft.peerMs > 0, `${peer.model}: TTFT on both`);
    t.ok(peer.healthP99 && peer.healthP99.oursMs > 0 && peer.healthP99.peerMs > 0, `${peer.model}: health p99 on both, under the same load`);
    t.match(peer.cpuLibrary, /^libggml-cpu-[\w-]+\.so$/, `${peer.model}: llama-server ran the prebuilt CPU library our server mapped`);
  }
  for (const label of ['tiny-qwen3.Q4_0', 'tiny-qwen3.Q4_0@llama-server']) {
    t.ok(result.histograms.some((h) => h.model === label && h.scenario === 'paired.c4' && h.metric === 'aggregate_tps'), `${label}: the sweep rounds in turn are recorded`);
  }
  t.match(run.stdout, /tiny-qwen3\.Q4_0 ours vs tiny-qwen3\.Q4_0@llama-server, rounds in turn: aggregate tok\/s by clients 1: /, 'the summary shows the comparison');
});

t.test("llama-server is given the libggml-cpu our server mapped, beside its own build's ggml-base", async (t) => {
  const maps = [
    '7f15a3000000-7f15a3100000 r-xp 00000000 08:01 1234   /usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30',
    '7f15a3200000-7f15a3300000 r-xp 00000000 08:01 5678   /pkg/bins/linux-x64/libggml-cpu-sapphirerapids.so',
    '7f15a3400000-7f15a3500000 rw-p 00000000 00:00 0 ',
  ].join('\n');
  t.equal(ggmlCpuLibraryIn(maps), '/pkg/bins/linux-x64/libggml-cpu-sapphirerapids.so');
  t.equal(ggmlCpuLibraryIn(maps.replace('libggml-cpu-sapphirerapids.so', 'libggml-base.so')), null, 'no CPU library mapped: none');

  const root = tempDir('same-cpu-');
  const bin = join(root, 'build', 'bin');
  mkdirSync(bin, { recursive: true });
  for (const file of ['llama-server', 'libggml-base.so.0.23.0']) writeFileSync(join(bin, file), '');
  symlinkSync('libggml-base.so.0.23.0', join(bin, 'libggml-base.so.0'));
  const variant = join(root, 'libggml-cpu-zen4.so');
  writeFileSync(variant, '');
  const env = sameCpuLibraryEnv(join(bin, 'llama-server'), variant);
  if (!env) return t.fail('no environment for a build with libggml-base.so.0');
  t.equal(realpathSync(join(env.LD_LIBRARY_PATH, 'libggml-cpu.so.0')), realpathSync(variant), 'libggml-cpu.so.0 is the mapped library');
  t.equal(realpathSync(join(env.LD_LIBRARY_PATH, 'libggml-base.so')), realpathSync(join(bin, 'libggml-base.so.0.23.0')), "its ggml-base is llama-server's own");
  rmSync(join(bin, 'libggml-base.so.0'));
  t.equal(sameCpuLibraryEnv(join(bin, 'llama-server'), variant), null, 'a build without a shared ggml-base is run as it is');
});

t.test('a sweep round with a failed request is run again, up to six times over, and only whole rounds count', async (t) => {
  const outcomes = [true, false, false, true, true];
  const seen: number[] = [];
  const failed = await runWholeRounds(3, async (whole) => {
    seen.push(whole);
    return outcomes.shift() ?? false;
  });
  t.equal(failed, 2);
  t.same(seen, [0, 1, 1, 1, 2], 'each try is told how many rounds were whole before it');
  let tries = 0;
  t.equal(await runWholeRounds(3, async () => (tries++, false)), 7, 'a level whose every round fails gives up');
  t.equal(tries, 7, 'the first try and six more');
  tries = 0;
  t.equal(await runWholeRounds(1, async () => (tries++, false), 1), 2, 'a smaller budget: the first try and one more');
  t.equal(tries, 2);
  t.equal(await runWholeRounds(1, async () => (tries++, true), -1), 0, 'a spent budget runs nothing');
  t.equal(tries, 2);
});

t.test('the sweep in turn: the side that goes first alternates from round to round', async (t) => {
  t.same([0, 1, 2, 3].map((round) => inTurn(round, ['ours', 'peer'] as const)), [['ours', 'peer'], ['peer', 'ours'], ['ours', 'peer'], ['peer', 'ours']]);
});

t.test("llama-server's slots of a round count as runs of consecutive ids, each a forward pass of its own", async (t) => {
  t.equal(idRuns([4, 5, 6, 7]), 1);
  t.equal(idRuns([15, 14, 1, 0]), 2, 'in any order');
  t.equal(idRuns([2, 4, 5]), 2);
  t.equal(idRuns([0, 2, 4, 6]), 4);
  t.equal(idRuns([3]), 1);
  t.equal(idRuns([]), 0);
});

t.test('the comparison with llama-server: from the rounds in turn, ratios are ours over theirs, TTFT a difference, health at p99', async (t) => {
  const recorders = new Recorders();
  for (const [label, scale] of [['m.Q4_0', 1], ['m.Q4_0@llama-server', 2]] as const) {
    for (const v of [10, 11, 12]) recorders.record(label, 'paired.c1', 'aggregate_tps', v * scale);
    for (const v of [40, 41, 42]) recorders.record(label, 'paired.c16', 'aggregate_tps', v * scale);
    for (const v of [30, 31, 32]) recorders.record(label, 'paired.c1', 'ttft', v * scale);
    for (let i = 1; i <= 100; i++) recorders.record(label, 'paired.health-while-generating', 'latency', (i >= 99 ? 50 : 1) * scale);
    // What each server measured alone, minutes apart, is not compared.
    recorders.record(label, 'sweep.c1', 'aggregate_tps', 1000 / scale);
    recorders.record(label, 'sweep.c4', 'aggregate_tps', 1000 / scale);
    recorders.record(label, 'openai-completions.stream.short', 'ttft', 1000 / scale);
    recorders.record(label, 'admin-health.while-generating', 'latency', 1000 / scale);
  }
  recorders.record('m.Q4_0', 'paired.c4', 'aggregate_tps', 20);
  const [row] = peerComparisons(recorders, [{ model: 'm.Q4_0', peer: 'm.Q4_0@llama-server', concurrency: [1, 4, 16], healthClients: 16, cpuLibrary: null }]);
  // the histograms keep 3 significant digits
  const near = (actual: number | undefined, expected: number): boolean => actual !== undefined && Math.abs(actual - expected) <= Math.abs(expected) * 0.002;
  const levels = row?.throughput ?? [];
  t.same(levels.map((x) => x.clients), [1, 16], 'only the levels both sides measured');
  t.ok(near(levels[0]?.ours, 11) && near(levels[0]?.peer, 22) && near(levels[1]?.ours, 41) && near(levels[1]?.peer, 82), 'median aggregate tok/s of each side', { levels });
  t.ok(levels.every((x) => near(x.ratio, 0.5)), 'ratios are ours / llama-server', { levels });
  t.ok(near(row?.ttft?.oursMs, 31) && near(row?.ttft?.peerMs, 62) && near(row?.ttft?.differenceMs, -31), 'median TTFT of each, and ours minus theirs', row?.ttft ?? {});
  t.ok(row?.healthP99?.clients === 16 && near(row.healthP99.oursMs, 50) && near(row.healthP99.peerMs, 100) && near(row.healthP99.ratio, 0.5), 'the health p99 shows the slowest 1%', row?.healthP99 ?? {});
});

function syntheticResult(genTps: number[], ttftMs: number[]): BenchResult {
  const recorders = new Recorders();
  for (const v of genTps) recorders.record('m', 'openai-completions.stream.short', 'gen_tps', v);
  for (const v of ttftMs) recorders.record('m', 'openai-completions.stream.short', 'ttft', v);
  const load = { before: { loadavg: [0, 0, 0], othersBusyPercent: 0 }, during: { samples: 0, loadavg1Max: 0, machineBusyMean: 0, othersBusyMean: 0, othersBusyMax: 0 }, busy: false, busyReasons: [], thresholdPercent: 15, samples: [] };
  return {
    schema: RESULT_SCHEMA,
    startedAt: '2026-11-23T00:00:00.000Z',
    finishedAt: '2026-11-23T00:01:00.000Z',
    durationSeconds: 60,
    fingerprint: { hostname: 'synthetic', cpuModel: 'cpu', cores: 2, memoryGiB: 24, os: 'os', kernel: 'k', node: 'v20', blasLibraries: [], openblasCoretypeEnv: '', openblasCore: null, gitCommit: null, gitDirty: null },
    flags: { quick: true, url: null, models: ['m'], argv: [] },
    server: { url: 'http://127.0.0.1:1', startedByBench: true },
    models: [],
    efficiency: [],
    peers: [],
    frontEnd: [],
    failures: {},
    load,
    histograms: recorders.toRecords(),
  };
}

t.test('--compare exits non-zero only when a figure regresses beyond the runs noise', async (t) => {
  const dir = tempDir('bench-compare-');
  const write = (name: string, result: BenchResult): string => {
    const path = join(dir, name);
    writeFileSync(path, JSON.stringify(result));
    return path;
  };
  const spread = (center: number): number[] => [0.95, 0.97, 0.99, 1, 1, 1.01, 1.03, 1.05].map((f) => center * f);
  const baseline = write('baseline.json', syntheticResult(spread(100), spread(20)));
  const noisy = write('noisy.json', syntheticResult(spread(98), spread(20.4)));
  const regressed = write('regressed.json', syntheticResult(spread(60), spread(20)));

  const same = bench(['--compare', baseline, '--current', noisy]);
  t.equal(same.status, 0, `a 2% change inside the runs' spread passes\n${same.stdout}${same.stderr}`);
  t.match(same.stdout, /within noise/);

  const worse = bench(['--compare', baseline, '--current', regressed]);
  t.equal(worse.status, 1, `a 40% drop in tok/s fails\n${worse.stdout}${worse.stderr}`);
  t.match(worse.stdout, /m\/openai-completions\.stream\.short\/gen_tps\s.*REGRESSED/);
  t.notMatch(worse.stdout, /stream\.short\/ttft\s.*REGRESSED/, 'the unchanged figure is not blamed');

  const missing = bench(['--compare', join(dir, 'nope.json'), '--current', regressed]);
  t.equal(missing.status, 2, 'an unreadable baseline is a usage error');
});

t.test('--peer with --model measures one of the three models, and names them when it is none of them', async (t) => {
  // The model is chosen before any server starts, so a stand-in binary is enough to reach the check.
  const run = bench(['--peer', 'llama-server', '--peer-binary', '/bin/true', '--model', 'no-such-model', '--cache-dir', tempDir('bench-peer-model-')], 60_000);
  t.equal(run.status, 2, 'a usage error');
  t.match(run.stderr, /--peer with --model: one of qwen2\.5-0\.5b-shape-fp32, qwen2\.5-0\.5b-shape\.F32, qwen2\.5-0\.5b-shape\.Q4_0/);
});
