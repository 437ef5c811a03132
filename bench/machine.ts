/**
 * What machine a result came from, and how busy it was. The machine is shared, so the load
 * monitor separates CPU time used by the bench's own processes (itself, the server, the raw
 * engine) from everyone else's; other work during a run skews every figure and flags it.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';

export interface Fingerprint {
  hostname: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  os: string;
  kernel: string;
  node: string;
  blasLibraries: string[];
  /** OPENBLAS_CORETYPE as set for the run ('' when unset: OpenBLAS detects the core). */
  openblasCoretypeEnv: string;
  /** The kernel set OpenBLAS chose, as it reports with OPENBLAS_VERBOSE=2. */
  openblasCore: string | null;
  gitCommit: string | null;
  gitDirty: boolean | null;
}

function osName(): string {
  const release = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '';
  return /^PRETTY_NAME="?([^"\n]*)"?/m.exec(release)?.[1] ?? `${os.type()} ${os.release()}`;
}

function git(args: string[]): string | null {
  try {
    return execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

export function fingerprint(blasLibraries: string[], openblasCore: string | null): Fingerprint {
  const status = git(['--no-optional-locks', 'status', '--porcelain', '--untracked-files=no']);
  return {
    hostname: os.hostname(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    os: osName(),
    kernel: os.release(),
    node: process.version,
    blasLibraries,
    openblasCoretypeEnv: process.env.OPENBLAS_CORETYPE ?? '',
    openblasCore,
    gitCommit: git(['rev-parse', 'HEAD']),
    gitDirty: status === null ? null : status.length > 0,
  };
}

/** Jiffies: busy and total over all CPUs since boot. */
function cpuTimes(): { busy: number; total: number } {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * CPU jiffies used so far by `root` and every process below it. Each process counts its own time
 * and its reaped children's (cutime, cstime), so the sum stays continuous when a child exits.
 */
export function treeJiffies(root: number): number {
  const parents = new Map<number, number>();
  const used = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parents.set(Number(entry), Number(fields[1]));
      used.set(Number(entry), Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]));
    } catch {
      // the process ended while we looked
    }
  }
  const inTree = (pid: number): boolean => {
    for (let p: number | undefined = pid; p !== undefined && p > 1; p = parents.get(p)) if (p === root) return true;
    return false;
  };
  let sum = 0;
  for (const [pid, jiffies] of used) if (inTree(pid)) sum += jiffies;
  return sum;
}

export interface LoadSample {
  atMs: number;
  loadavg1: number;
  /** Percent of all cores busy, whoever used them. */
  machineBusyPercent: number;
  /** Percent of all cores used by processes outside the bench's own tree. */
  othersBusyPercent: number;
}

export interface LoadReport {
  before: { loadavg: number[]; othersBusyPercent: number };
  during: { samples: number; loadavg1Max: number; machineBusyMean: number; othersBusyMean: number; othersBusyMax: number };
  busy: boolean;
  busyReasons: string[];
  /** Others' CPU share above which a run is flagged busy (percent of all cores). */
  thresholdPercent: number;
  samples: LoadSample[];
}

const BUSY_THRESHOLD_PERCENT = 15;
const cores = os.cpus().length;

/** Samples machine load every `intervalMs` until stopped. */
export class LoadMonitor {
  private readonly samples: LoadSample[] = [];
  private timer: NodeJS.Timeout | null = null;
  private last = { ...cpuTimes(), ours: treeJiffies(process.pid) };
  private readonly started = performance.now();

  constructor(private readonly before: LoadReport['before']) {}

  /** Measures the machine for `ms` before the bench does anything. */
  static async baseline(ms = 2000): Promise<LoadMonitor> {
    const a = { ...cpuTimes(), ours: treeJiffies(process.pid) };
    await new Promise((resolve) => setTimeout(resolve, ms));
    const b = { ...cpuTimes(), ours: treeJiffies(process.pid) };
    const others = b.total > a.total ? ((b.busy - a.busy - (b.ours - a.ours)) / (b.total - a.total)) * 100 : 0;
    return new LoadMonitor({ loadavg: os.loadavg().map((v) => Math.round(v * 100) / 100), othersBusyPercent: Math.max(0, Math.round(others * 10) / 10) });
  }

  start(intervalMs = 1000): void {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  private sample(): void {
    const now = { ...cpuTimes(), ours: treeJiffies(process.pid) };
    const total = now.total - this.last.total;
    if (total <= 0) return;
    const busy = now.busy - this.last.busy;
    const ours = now.ours - this.last.ours;
    this.last = now;
    const round = (v: number): number => Math.round(Math.max(0, Math.min(100, v)) * 10) / 10;
    this.samples.push({
      atMs: Math.round(performance.now() - this.started),
      loadavg1: Math.round((os.loadavg()[0] ?? 0) * 100) / 100,
      machineBusyPercent: round((busy / total) * 100),
      othersBusyPercent: round(((busy - ours) / total) * 100),
    });
  }

  /** The share of others' CPU in the latest sample, for the progress line. */
  get latestOthersBusy(): number | null {
    return this.samples.at(-1)?.othersBusyPercent ?? null;
  }

  stop(): LoadReport {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    const others = this.samples.map((s) => s.othersBusyPercent);
    const mean = (values: number[]): number => (values.length ? Math.round((values.reduce((a, b) => a + b, 0) / values.length) * 10) / 10 : 0);
    const during = {
      samples: this.samples.length,
      loadavg1Max: Math.max(0, ...this.samples.map((s) => s.loadavg1)),
      machineBusyMean: mean(this.samples.map((s) => s.machineBusyPercent)),
      othersBusyMean: mean(others),
      othersBusyMax: Math.max(0, ...others),
    };
    const busyReasons: string[] = [];
    if (this.before.othersBusyPercent > BUSY_THRESHOLD_PERCENT) busyReasons.push(`other processes used ${this.before.othersBusyPercent}% of the CPUs before the run`);
    if ((this.before.loadavg[0] ?? 0) > cores * 0.5) busyReasons.push(`1-minute load average was ${this.before.loadavg[0]} on ${cores} cores before the run`);
    if (during.othersBusyMean > BUSY_THRESHOLD_PERCENT) busyReasons.push(`other processes used ${during.othersBusyMean}% of the CPUs on average during the run (max ${during.othersBusyMax}%)`);
    return { before: this.before, during, busy: busyReasons.length > 0, busyReasons, thresholdPercent: BUSY_THRESHOLD_PERCENT, samples: this.samples };
  }
}
