/** Runs the chosen suites against one host, or against every host of a fleet file in parallel. */
import { readFileSync } from 'node:fs';
import { SoakClient } from './client.ts';
import { runComprehensive, type ComprehensiveOptions, type ComprehensiveResult } from './comprehensive.ts';
import { runLongSoak, type LongSoakOptions } from './long-soak.ts';
import { Reporter, gb, markdownTable, type SuiteResult, type Write } from './report.ts';
import { runStress, type StressOptions } from './stress.ts';

export type SuiteName = 'comprehensive' | 'stress' | 'long';
export const SUITES: SuiteName[] = ['comprehensive', 'stress', 'long'];

export interface Host {
  url: string;
  model: string | undefined;
}

export interface SuiteSettings {
  suites: SuiteName[];
  comprehensive: ComprehensiveOptions;
  stress: StressOptions;
  long: LongSoakOptions | null;
}

export interface HostResult {
  url: string;
  model: string | null;
  passed: boolean;
  results: SuiteResult[];
}

export async function runHost(host: Host, settings: SuiteSettings, write: Write): Promise<HostResult> {
  const client = new SoakClient(host.url, host.model);
  const results: SuiteResult[] = [];
  for (const suite of settings.suites) {
    const report = new Reporter(write);
    if (suite === 'comprehensive') results.push(await runComprehensive(client, settings.comprehensive, report));
    else if (suite === 'stress') results.push(await runStress(client, settings.stress, report));
    else if (settings.long) results.push(await runLongSoak(client, settings.long, report));
    else throw new Error('the long soak needs --duration');
    write('');
  }
  return { url: client.url, model: host.model ?? null, passed: results.every((r) => r.passed), results };
}

/** One host a line: `URL [model]`; a bare `host` or `host:port` means http and port 11437. Blank lines and #comments are skipped. */
export function parseHostsFile(text: string): Host[] {
  return text
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .filter(Boolean)
    .map((line) => {
      const [address = '', model] = line.split(/\s+/);
      const withScheme = /^https?:\/\//.test(address) ? address : `http://${address}`;
      const url = new URL(withScheme);
      if (url.port === '' && !/^https?:\/\/[^/]*:\d+/.test(withScheme)) url.port = '11437';
      return { url: url.toString().replace(/\/$/, ''), model };
    });
}

export interface FleetResult {
  startedAt: string;
  finishedAt: string;
  passed: boolean;
  hosts: (HostResult & { error: string | null })[];
}

const hostLabel = (url: string): string => new URL(url).host;

/** Hosts without a model of their own in the file get `defaultModel` (--model). */
export async function runFleet(hostsFile: string, defaultModel: string | undefined, settings: SuiteSettings, write: Write): Promise<FleetResult> {
  const hosts = parseHostsFile(readFileSync(hostsFile, 'utf8')).map((h) => ({ ...h, model: h.model ?? defaultModel }));
  if (hosts.length === 0) throw new Error(`${hostsFile} lists no hosts`);
  const startedAt = new Date().toISOString();
  write(`Fleet soak: ${hosts.length} hosts, suites ${settings.suites.join(', ')}, started ${startedAt}`);
  const width = Math.max(...hosts.map((h) => hostLabel(h.url).length));
  const results = await Promise.all(
    hosts.map(async (host) => {
      const prefix = `[${hostLabel(host.url).padEnd(width)}] `;
      try {
        return { ...(await runHost(host, settings, (line) => write(prefix + line))), error: null };
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        write(`${prefix}[FAIL] ${message}`);
        return { url: host.url, model: host.model ?? null, passed: false, results: [], error: message };
      }
    }),
  );
  const fleet: FleetResult = { startedAt, finishedAt: new Date().toISOString(), passed: results.every((r) => r.passed), hosts: results };
  write('');
  for (const line of fleetTable(fleet)) write(line);
  write('');
  write(fleet.passed ? `✓ ALL ${hosts.length} HOSTS PASSED` : `✗ ${results.filter((r) => !r.passed).length} OF ${hosts.length} HOSTS FAILED`);
  return fleet;
}

export function fleetTable(fleet: FleetResult): string[] {
  const rows = fleet.hosts.map((h) => {
    const checks = h.results.flatMap((r) => r.checks);
    const comprehensive = h.results.find((r): r is ComprehensiveResult => r.suite === 'comprehensive');
    const m = comprehensive?.measurements;
    const failedNames = h.results.flatMap((r) => r.checks.filter((c) => !c.passed).map((c) => `${r.suite} ${c.number}`));
    return [
      hostLabel(h.url),
      h.model ?? 'default',
      String(checks.filter((c) => c.passed).length),
      String(checks.length - checks.filter((c) => c.passed).length),
      m?.recoveryPercent != null ? `${m.recoveryPercent.toFixed(1)}%` : '-',
      m?.leakDeltaGb != null ? gb(m.leakDeltaGb, 3) : '-',
      m?.idleUnloadSeconds != null ? `${m.idleUnloadSeconds.toFixed(0)}s/${m.idleTimeoutSeconds}s` : '-',
      h.error ? `FAIL (${h.error.slice(0, 40)})` : h.passed ? 'PASS' : `FAIL (${failedNames.join(', ')})`,
    ];
  });
  return markdownTable(['Host', 'Model', 'Passed', 'Failed', 'Recovery', 'Leak delta', 'Idle unload', 'Result'], rows);
}
