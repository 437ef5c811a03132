/** A self-contained HTML report for one run: inline SVG charts and tables, nothing fetched. */
import { decodeHistogram, type HistogramRecord } from './histograms.ts';
import type { BenchResult } from './result.ts';

const escape = (text: string): string => text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] as string);
const fmt = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

interface Series {
  name: string;
  points: [number, number][];
}

interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  xTicks: { at: number; label: string }[];
}

function lineChart(spec: ChartSpec): string {
  const [w, h, left, right, top, bottom] = [640, 300, 60, 170, 28, 40];
  const xs = spec.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = spec.series.flatMap((s) => s.points.map((p) => p[1]));
  if (xs.length === 0) return '';
  const [xMin, xMax] = [Math.min(...xs, ...spec.xTicks.map((t) => t.at)), Math.max(...xs, ...spec.xTicks.map((t) => t.at))];
  const yMax = Math.max(...ys) * 1.1 || 1;
  const x = (v: number): number => left + ((v - xMin) / (xMax - xMin || 1)) * (w - left - right);
  const y = (v: number): number => h - bottom - (v / yMax) * (h - top - bottom);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="11">`, `<text x="${left}" y="16" font-size="13" font-weight="bold">${escape(spec.title)}</text>`];
  parts.push(`<line x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}" stroke="#444"/><line x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}" stroke="#444"/>`);
  for (const tick of spec.xTicks) parts.push(`<text x="${x(tick.at)}" y="${h - bottom + 14}" text-anchor="middle">${escape(tick.label)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i;
    parts.push(`<text x="${left - 4}" y="${y(v) + 4}" text-anchor="end">${fmt(v)}</text><line x1="${left}" y1="${y(v)}" x2="${w - right}" y2="${y(v)}" stroke="#eee"/>`);
  }
  parts.push(`<text x="${(left + w - right) / 2}" y="${h - 6}" text-anchor="middle">${escape(spec.xLabel)}</text>`);
  parts.push(`<text x="14" y="${(top + h - bottom) / 2}" transform="rotate(-90 14 ${(top + h - bottom) / 2})" text-anchor="middle">${escape(spec.yLabel)}</text>`);
  spec.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length] as string;
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${s.points.map(([px, py]) => `${x(px).toFixed(1)},${y(py).toFixed(1)}`).join(' ')}"/>`);
    for (const [px, py] of s.points) parts.push(`<circle cx="${x(px).toFixed(1)}" cy="${y(py).toFixed(1)}" r="2.2" fill="${color}"><title>${escape(s.name)}: ${fmt(py)}</title></circle>`);
    parts.push(`<rect x="${w - right + 10}" y="${top + i * 16}" width="10" height="10" fill="${color}"/><text x="${w - right + 24}" y="${top + i * 16 + 9}">${escape(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

/** Percentiles on the "nines" axis: x = -log10(1 - p/100), so p90, p99 and p99.9 are evenly spaced. */
const CURVE_PERCENTILES = [0, 10, 25, 50, 75, 80, 90, 95, 97, 99, 99.5, 99.9];
const nines = (p: number): number => -Math.log10(1 - p / 100);

function percentileCurve(records: HistogramRecord[], title: string): string {
  const series = records.map((r) => {
    const histogram = decodeHistogram(r.encoded);
    const points = CURVE_PERCENTILES.map((p): [number, number] => [nines(p), histogram.getValueAtPercentile(p) / 1000]);
    points.push([nines(99.99), histogram.maxValue / 1000]);
    return { name: r.scenario, points };
  });
  const xTicks = [0, 50, 90, 99, 99.9].map((p) => ({ at: nines(p), label: `p${p}` })).concat([{ at: nines(99.99), label: 'max' }]);
  return lineChart({ title, xLabel: 'percentile', yLabel: records[0]?.unit ?? '', series, xTicks });
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cell = (v: string | number): string => `<td>${typeof v === 'number' ? fmt(v) : escape(v)}</td>`;
  return `<table><tr>${headers.map((x) => `<th>${escape(x)}</th>`).join('')}</tr>${rows.map((r) => `<tr>${r.map(cell).join('')}</tr>`).join('')}</table>`;
}

export function renderHtml(result: BenchResult): string {
  const f = result.fingerprint;
  const body: string[] = [`<h1>mlx-inference-server bench: ${escape(f.hostname)} ${escape(result.startedAt)}</h1>`];
  if (result.load.busy) body.push(`<p class="busy">BUSY MACHINE: ${result.load.busyReasons.map(escape).join('; ')}. Every figure is skewed.</p>`);
  body.push(
    table(
      ['CPU', 'cores', 'memory GiB', 'OS', 'Node', 'BLAS', 'OpenBLAS core (env)', 'commit', 'flags'],
      [[f.cpuModel, f.cores, f.memoryGiB, f.os, f.node, f.blasLibraries.map((p) => p.split('/').pop()).join(', '), `${f.openblasCore ?? '?'} (${f.openblasCoretypeEnv || 'unset'})`, `${f.gitCommit?.slice(0, 10) ?? '?'}${f.gitDirty ? ' (dirty)' : ''}`, result.flags.argv.join(' ') || '(none)']],
    ),
  );
  const l = result.load;
  body.push(`<p>Load before: loadavg ${l.before.loadavg.join(' / ')}, others' CPU ${l.before.othersBusyPercent}%. During: others' CPU mean ${l.during.othersBusyMean}% (max ${l.during.othersBusyMax}%), whole machine ${l.during.machineBusyMean}%, loadavg max ${l.during.loadavg1Max}. Run took ${Math.round(result.durationSeconds)} s.</p>`);
  if (result.efficiency.length > 0) {
    body.push('<h2>Server efficiency (server vs raw engine, same model and prompt, medians)</h2>');
    body.push(table(['model', 'prompt', 'server tok/s', 'raw tok/s', 'server / raw', 'server TTFT ms', 'raw TTFT ms', 'TTFT overhead ms'], result.efficiency.map((e) => [e.model, e.prompt, e.serverTokensPerSecond, e.rawTokensPerSecond, e.throughputRatio, e.serverTtftMs, e.rawTtftMs, e.ttftOverheadMs])));
  }
  if (result.peers.length > 0) {
    body.push('<h2>Ours against llama-server (same GGUF file, same client; ratios ours / llama-server)</h2>');
    const rows = result.peers.flatMap((p) => [
      ...p.throughput.map((x) => [p.model, `aggregate tok/s, ${x.clients} streams`, x.ours, x.peer, x.ratio]),
      ...(p.ttft ? [[p.model, 'TTFT ms (median, 1 stream), difference', p.ttft.oursMs, p.ttft.peerMs, p.ttft.differenceMs]] : []),
      ...(p.healthP99 ? [[p.model, `health p99 ms at ${p.healthP99.clients} streams`, p.healthP99.oursMs, p.healthP99.peerMs, p.healthP99.ratio]] : []),
      [p.model, 'CPU library (libggml-cpu)', p.cpuLibrary ?? '-', p.cpuLibrary ?? "its own build's", ''],
    ]);
    body.push(table(['model', 'figure', 'ours', 'llama-server', 'ratio'], rows));
  }
  for (const model of result.models) {
    const mine = result.histograms.filter((h) => h.model === model.label);
    body.push(`<h2>${escape(model.label)}</h2><p>weights held ${model.placement ?? '?'}; load ${model.loadSeconds ?? '?'} s on the server; prompt tokens short ${model.promptTokens.short ?? '?'}, long ${model.promptTokens.long ?? '?'}; max_tokens ${model.workload.maxTokens}; routes ${model.routes.join(', ')}</p>`);
    const sweep = mine.filter((h) => h.metric === 'aggregate_tps' && h.scenario.startsWith('sweep.c')).sort((a, b) => Number(a.scenario.slice(7)) - Number(b.scenario.slice(7)));
    if (sweep.length > 0) {
      const clients = sweep.map((h) => Number(h.scenario.slice(7)));
      const series = (['p50', 'p25', 'p75'] as const).map((p) => ({ name: `aggregate ${p}`, points: sweep.map((h, i): [number, number] => [Math.log2(clients[i] as number), h.percentiles[p]]) }));
      body.push(lineChart({ title: 'throughput vs concurrency', xLabel: 'concurrent clients', yLabel: 'aggregate tok/s', series, xTicks: clients.map((c) => ({ at: Math.log2(c), label: String(c) })) }));
    }
    for (const metric of ['ttft', 'itl', 'e2e'] as const) {
      const records = mine.filter((h) => h.metric === metric);
      if (records.length > 0) body.push(percentileCurve(records, `${metric} percentiles`));
    }
  }
  const frontEnd = result.histograms.filter((h) => h.model === 'server');
  if (frontEnd.length > 0) {
    body.push('<h2>Front-end cost (routes with no model work, model idle)</h2>');
    body.push(table(['route', 'connections', 'req/s', 'errors', 'client CPU % of a core', 'server CPU % of a core'], result.frontEnd.map((r) => [r.path, r.connections, r.requests / r.seconds, r.errors, r.clientCpuPercent, r.serverCpuPercent ?? '-'])));
    body.push(percentileCurve(frontEnd.filter((h) => h.metric === 'latency'), 'front-end latency percentiles'));
  }
  if (Object.keys(result.failures).length > 0) body.push('<h2>Failures</h2>', table(['scenario', 'count', 'first error'], Object.entries(result.failures).map(([k, v]) => [k, v.count, v.firstError])));
  body.push('<h2>Every histogram</h2>');
  body.push(table(['model', 'scenario', 'metric', 'unit', 'n', 'p50', 'p90', 'p99', 'p99.9', 'max'], result.histograms.map((h) => [h.model, h.scenario, h.metric, h.unit, h.count, h.percentiles.p50, h.percentiles.p90, h.percentiles.p99, h.percentiles.p99_9, h.percentiles.max])));
  const style = 'body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;font-size:12px;text-align:right}th{background:#f4f4f4}.busy{background:#fdd;padding:8px;font-weight:bold}svg{margin:6px 12px 6px 0}';
  return `<!doctype html><html><head><meta charset="utf-8"><title>bench ${escape(f.hostname)} ${escape(result.startedAt)}</title><style>${style}</style></head><body>${body.join('\n')}</body></html>\n`;
}
