/** `npm run soak -- [flags]`: the soak suite's command line. Exit 0 only when every check passed. */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { COMPREHENSIVE_DEFAULTS } from './comprehensive.ts';
import { SUITES, runFleet, runHost, type SuiteName, type SuiteSettings } from './fleet.ts';
import { longSoakDefaults } from './long-soak.ts';
import { parseDuration } from './report.ts';
import { STRESS_DEFAULTS } from './stress.ts';

const USAGE = `usage: npm run soak -- [flags]      (or soak/air_comprehensive_test.sh [flags])

what to run (default: the comprehensive test):
  --suite LIST            comma-separated: comprehensive, stress, long (default comprehensive;
                          long when --duration is given)
  --stress                same as --suite stress
  --duration D            long soak for D (90s, 10m, 24h, 1h30m)
  --hosts FILE            run against every host in FILE (one 'URL [model]' a line) in parallel
  --json FILE             write all results as JSON (fleet and long soak default to a
                          timestamped file in the current folder)

target:
  --url URL               server (default http://127.0.0.1:11437)
  --model NAME            model to test (default: the server's default model)

comprehensive test:
  --idle-wait S           idle timeout to expect (default: the server's idle_timeout_seconds)
  --extended              keep waiting for the idle unload up to 390/180 of the timeout
  --min-recovery PCT      memory recovered after unload, percent (default ${COMPREHENSIVE_DEFAULTS.minRecoveryPercent})
  --max-leak-gb GB        final resident growth over the baseline (default ${COMPREHENSIVE_DEFAULTS.maxLeakGb})
  --concurrency N         concurrent requests in check 5 (default ${COMPREHENSIVE_DEFAULTS.concurrency})
  --leak-cycles N         load/unload cycles before the leak check (default ${COMPREHENSIVE_DEFAULTS.leakCycles})
  --unload-first          unload a model found loaded at the start instead of failing check 2

stress suite:
  --long-tokens N         tokens in the long streamed generation (default ${STRESS_DEFAULTS.longTokens})
  --tokens N              tokens per ordinary request (default ${STRESS_DEFAULTS.tokens})

long soak:
  --clients N             parallel clients (default 2)
  --load-phase D          load between idle spells (default a quarter of the run, 5s..10m)
  --max-growth-gb GB      fitted resident growth over the run that fails it (default 0.1)
  --max-error-rate R      fraction of requests allowed to fail (default 0)
  --max-latency-drift R   fail when median per-token latency grows by more than R (0.5 = 50%);
                          default: report only
`;

function fail(message: string): never {
  process.stderr.write(`soak: ${message}\n\n${USAGE}`);
  process.exit(2);
}

const number = (name: string, value: string | undefined, fallback: number): number => {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) fail(`--${name} must be a non-negative number, got '${value}'`);
  return n;
};

const stringFlags = ['url', 'model', 'suite', 'duration', 'hosts', 'json', 'idle-wait', 'min-recovery', 'max-leak-gb', 'concurrency', 'leak-cycles', 'long-tokens', 'tokens', 'clients', 'load-phase', 'max-growth-gb', 'max-error-rate', 'max-latency-drift'] as const;
const booleanFlags = ['stress', 'extended', 'unload-first', 'help'] as const;

async function main(): Promise<number> {
  let values: Partial<Record<(typeof stringFlags)[number], string> & Record<(typeof booleanFlags)[number], boolean>>;
  try {
    values = parseArgs({
      args: process.argv.slice(2),
      options: Object.fromEntries([...stringFlags.map((f) => [f, { type: 'string' }]), ...booleanFlags.map((f) => [f, { type: 'boolean' }])]),
      strict: true,
    }).values as typeof values;
  } catch (error) {
    fail((error as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const duration = values.duration === undefined ? null : parseDurationFlag('duration', values.duration);
  const suites = (values.suite ?? (values.stress ? 'stress' : duration !== null ? 'long' : 'comprehensive')).split(',').map((s) => s.trim()) as SuiteName[];
  for (const s of suites) if (!SUITES.includes(s)) fail(`unknown suite '${s}' (${SUITES.join(', ')})`);
  if (suites.includes('long') && duration === null) fail('the long soak needs --duration');

  const long = duration === null ? null : longSoakDefaults(duration);
  if (long) {
    long.clients = number('clients', values.clients, long.clients);
    if (values['load-phase'] !== undefined) long.loadPhaseSeconds = parseDurationFlag('load-phase', values['load-phase']);
    long.maxGrowthGb = number('max-growth-gb', values['max-growth-gb'], long.maxGrowthGb);
    long.maxErrorRate = number('max-error-rate', values['max-error-rate'], long.maxErrorRate);
    long.maxLatencyDrift = values['max-latency-drift'] === undefined ? null : number('max-latency-drift', values['max-latency-drift'], 0);
    long.idleWaitSeconds = values['idle-wait'] === undefined ? null : number('idle-wait', values['idle-wait'], 0);
  }
  const settings: SuiteSettings = {
    suites,
    comprehensive: {
      idleWaitSeconds: values['idle-wait'] === undefined ? null : number('idle-wait', values['idle-wait'], 0),
      extended: values.extended ?? false,
      minRecoveryPercent: number('min-recovery', values['min-recovery'], COMPREHENSIVE_DEFAULTS.minRecoveryPercent),
      maxLeakGb: number('max-leak-gb', values['max-leak-gb'], COMPREHENSIVE_DEFAULTS.maxLeakGb),
      concurrency: number('concurrency', values.concurrency, COMPREHENSIVE_DEFAULTS.concurrency),
      leakCycles: number('leak-cycles', values['leak-cycles'], COMPREHENSIVE_DEFAULTS.leakCycles),
      unloadFirst: values['unload-first'] ?? false,
    },
    stress: { ...STRESS_DEFAULTS, longTokens: number('long-tokens', values['long-tokens'], STRESS_DEFAULTS.longTokens), tokens: number('tokens', values.tokens, STRESS_DEFAULTS.tokens) },
    long,
  };

  const write = (line: string): void => void process.stdout.write(`${line}\n`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  if (values.hosts !== undefined) {
    const fleet = await runFleet(values.hosts, values.model, settings, write);
    const jsonPath = values.json ?? `soak-fleet-${stamp}.json`;
    writeFileSync(jsonPath, `${JSON.stringify(fleet, null, 2)}\n`);
    write(`Results: ${jsonPath}`);
    return fleet.passed ? 0 : 1;
  }
  const result = await runHost({ url: values.url ?? 'http://127.0.0.1:11437', model: values.model }, settings, write);
  const jsonPath = values.json ?? (suites.includes('long') ? `soak-long-${stamp}.json` : null);
  if (jsonPath !== null) {
    writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
    write(`Results: ${jsonPath}`);
  }
  return result.passed ? 0 : 1;
}

function parseDurationFlag(name: string, text: string): number {
  try {
    return parseDuration(text);
  } catch (error) {
    fail(`--${name}: ${(error as Error).message}`);
  }
}

process.exitCode = await main();
