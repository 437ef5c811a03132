/** The result file: one JSON per run under bench/results/, named by host and start time. */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HistogramRecord, Recorders } from './histograms.ts';
import type { Fingerprint, LoadReport } from './machine.ts';
import { PAIRED_HEALTH, pairedSweepScenario, RAW_LONG, RAW_SHORT, STREAM_LONG, STREAM_SHORT, type FrontEndResult, type ModelRunInfo } from './scenarios.ts';

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

/**
 * Our server against llama-server on the same GGUF file, same client, same run, from the sweep
 * rounds the two ran in turn (pairedSweep). Ratios are ours / theirs.
 */
export interface PeerComparison {
  model: string;
  peer: string;
  /** Median aggregate tok/s of the rounds at each stream count. */
  throughput: { clients: number; ours: number; peer: number; ratio: number }[];
  /** Median time to first token of the one-stream rounds (short prompt, streamed completions). */
  ttft: { oursMs: number; peerMs: number; differenceMs: number } | null;
  /** p99 of the health route (ours /admin/health, llama-server /health) polled while `clients` streams decode. */
  healthP99: { clients: number; oursMs: number; peerMs: number; ratio: number } | null;
  /** The libggml-cpu both sides ran (bench/peers/same-cpu.ts); null: llama-server ran its own build's. */
  cpuLibrary: string | null;
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
  /** With --peer llama-server; empty otherwise. */
  peers: PeerComparison[];
  frontEnd: FrontEndResult[];
  failures: Record<string, { count: number; firstError: string }>;
  load: LoadReport;
  histograms: HistogramRecord[];
}

const round3 = (v: number): number => Math.round(v * 1000) / 1000;

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
        throughputRatio: round3(serverTps / rawTps),
        serverTtftMs: serverTtft,
        rawTtftMs: rawTtft,
        ttftOverheadMs: round3(serverTtft - rawTtft),
      });
    }
  }
  return rows;
}

export function peerComparisons(recorders: Recorders, pairs: { model: string; peer: string; concurrency: number[]; healthClients: number; cpuLibrary: string | null }[]): PeerComparison[] {
  return pairs.map(({ model, peer, concurrency, healthClients, cpuLibrary }) => {
    const throughput = concurrency.flatMap((clients) => {
      const ours = recorders.median(model, pairedSweepScenario(clients), 'aggregate_tps');
      const theirs = recorders.median(peer, pairedSweepScenario(clients), 'aggregate_tps');
      return ours === null || theirs === null ? [] : [{ clients, ours, peer: theirs, ratio: round3(ours / theirs) }];
    });
    const oursTtft = recorders.median(model, pairedSweepScenario(1), 'ttft');
    const peerTtft = recorders.median(peer, pairedSweepScenario(1), 'ttft');
    const oursHealth = recorders.percentile(model, PAIRED_HEALTH, 'latency', 99);
    const peerHealth = recorders.percentile(peer, PAIRED_HEALTH, 'latency', 99);
    return {
      model,
      peer,
      throughput,
      ttft: oursTtft === null || peerTtft === null ? null : { oursMs: oursTtft, peerMs: peerTtft, differenceMs: round3(oursTtft - peerTtft) },
      healthP99: oursHealth === null || peerHealth === null ? null : { clients: healthClients, oursMs: oursHealth, peerMs: peerHealth, ratio: round3(oursHealth / peerHealth) },
      cpuLibrary,
    };
  });
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
