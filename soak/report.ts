/** The suites' output format ([TEST], [PASS], [FAIL], [INFO]) and the results every suite returns. */

export type Write = (line: string) => void;

export interface CheckResult {
  number: number;
  name: string;
  passed: boolean;
  /** Every [INFO]/[PASS]/[FAIL] line printed under the check, without its tag's brackets. */
  lines: string[];
}

export interface SuiteResult {
  suite: string;
  url: string;
  model: string | null;
  passed: boolean;
  checks: CheckResult[];
  startedAt: string;
  finishedAt: string;
}

/** Prints a suite's summary and returns what every suite's result holds. */
export function finishSuite<S extends string>(suite: S, target: { url: string; model: string | undefined }, report: Reporter, startedAt: Date, successLine: string): SuiteResult & { suite: S } {
  report.summary(successLine);
  return { suite, url: target.url, model: target.model ?? null, passed: report.failed === 0, checks: report.checks, startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString() };
}

export class Reporter {
  readonly checks: CheckResult[] = [];
  private current: CheckResult | null = null;

  constructor(private readonly write: Write) {}

  line(text = ''): void {
    this.write(text);
  }

  banner(lines: string[]): void {
    const rule = '='.repeat(72);
    this.write(rule);
    for (const line of lines) this.write(line);
    this.write(rule);
  }

  test(name: string): void {
    this.current = { number: this.checks.length + 1, name, passed: false, lines: [] };
    this.checks.push(this.current);
    this.write('');
    this.write(`[TEST] ${this.current.number}. ${name}`);
  }

  info(message: string): void {
    this.current?.lines.push(`INFO ${message}`);
    this.write(`[INFO] ${message}`);
  }

  /** Ends the current check; a check ends with exactly one verdict. */
  verdict(passed: boolean, message: string): boolean {
    const check = this.current;
    if (!check) throw new Error('verdict outside a check');
    check.passed = passed;
    check.lines.push(`${passed ? 'PASS' : 'FAIL'} ${message}`);
    this.write(`${passed ? '[PASS]' : '[FAIL]'} ${message}`);
    this.current = null;
    return passed;
  }

  pass(message: string): boolean {
    return this.verdict(true, message);
  }

  fail(message: string): boolean {
    return this.verdict(false, message);
  }

  get passed(): number {
    return this.checks.filter((c) => c.passed).length;
  }

  get failed(): number {
    return this.checks.length - this.passed;
  }

  summary(successLine: string): void {
    this.write('');
    this.banner(['Test Summary']);
    this.write(`Tests Passed: ${this.passed}`);
    this.write(`Tests Failed: ${this.failed}`);
    this.write(`Completed: ${new Date().toString()}`);
    this.write('');
    this.write(this.failed === 0 ? `✓ ${successLine}` : `✗ ${this.failed} TEST(S) FAILED`);
  }
}

/** Renders rows as a Markdown table. */
export function markdownTable(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const row = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [row(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(row)];
}

const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/** '90s', '10m', '24h', '1h30m', '250ms' or a bare number of seconds. */
export function parseDuration(text: string): number {
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) throw new Error(`not a duration: '${text}' (e.g. 90s, 10m, 24h)`);
  return parts.reduce((sum, p) => sum + Number(p[1]) * (UNIT_SECONDS[p[2] as string] as number), 0);
}

export const formatSeconds = (seconds: number): string => {
  const s = Math.round(seconds);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
};

export const gb = (value: number, digits = 4): string => `${value.toFixed(digits)} GB`;

export const clock = (): string => new Date().toTimeString().slice(0, 8);
