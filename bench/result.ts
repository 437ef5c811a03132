/** The result file: one JSON per run under bench/results/, named by host and start time. */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HistogramRecord, Recorders } from './histograms.ts';
import type { Fingerprint, LoadReport } from './machine.ts';
import { RAW_LONG, RAW_SHORT, STREAM_LONG, STREAM_SHORT, type FrontEndResult, type ModelRunInfo } from './scenarios.ts';

export const RESULT_SCHEMA = 'mlx-inference-server-bench/1';

/** Server against raw engine for the same model and prompt (medians): what the server costs. */
export interface EfficiencyRow {
  model: string;
  prompt: 'short' | 'long';
  serverTokensPerSecond: number;
  rawTokensPerSecond: number;
  /** server tok/s / raw tok/s: 1 means the server adds nothing. */
  throughputRatio: number;
  serverTtftMs: number;
  rawTtftMs: number;
  /** server TTFT - raw TTFT. */
  ttftOverheadMs: number;
}

export interface BenchResult {
  schema: typeof RESULT_SCHEMA;
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  fingerprint: Fingerprint;
  flags: { quick: boolean; url: string | null; models: string[]; argv: string[] };
  server: { url: string; startedByBench: boolean };
  models: (ModelRunInfo & { rawEngineLoadMs: number | null })[];
  efficiency: EfficiencyRow[];
  frontEnd: FrontEndResult[];
  failures: Record<string, { count: number; firstError: string }>;
  load: LoadReport;
  histograms: HistogramRecord[];
}

export function efficiencyRows(recorders: Recorders, models: string[]): EfficiencyRow[] {
  const rows: EfficiencyRow[] = [];
  const pairs = [['short', STREAM_SHORT, RAW_SHORT], ['long', STREAM_LONG, RAW_LONG]] as const;
  for (const model of models) {
    for (const [prompt, server, raw] of pairs) {
      const serverTps = recorders.median(model, server, 'gen_tps');
      const rawTps = recorders.median(model, raw, 'gen_tps');
      const serverTtft = recorders.median(model, server, 'ttft');
      const rawTtft = recorders.median(model, raw, 'ttft');
      if (serverTps === null || rawTps === null || serverTtft === null || rawTtft === null) continue;
      rows.push({
        model,
        prompt,
        serverTokensPerSecond: serverTps,
        rawTokensPerSecond: rawTps,
        throughputRatio: Math.round((serverTps / rawTps) * 1000) / 1000,
        serverTtftMs: serverTtft,
        rawTtftMs: rawTtft,
        ttftOverheadMs: Math.round((serverTtft - rawTtft) * 1000) / 1000,
      });
    }
  }
  return rows;
}

/** `<host>-<UTC time>`, safe as a file name. */
export const resultBaseName = (result: BenchResult): string => `${result.fingerprint.hostname.replace(/[^A-Za-z0-9_.-]/g, '_')}-${result.startedAt.replace(/[:]/g, '').replace(/\.\d+Z$/, 'Z')}`;

export function writeResult(result: BenchResult, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${resultBaseName(result)}.json`);
  writeFileSync(path, `${JSON.stringify(result, null, 1)}\n`);
  return path;
}

export function readResult(path: string): BenchResult {
  const result = JSON.parse(readFileSync(path, 'utf8')) as BenchResult;
  if (result.schema !== RESULT_SCHEMA || !Array.isArray(result.histograms)) throw new Error(`${path} is not a bench result (${RESULT_SCHEMA})`);
  return result;
}
