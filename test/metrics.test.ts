/** GET /metrics: Prometheus text from the telemetry and the latency histograms, before and after real requests. */
import t from 'tap';
import { LatencyHistogram } from '../src/telemetry/latency.ts';
import { startServer } from './helpers/server.ts';

/** Exposition lines as `name{labels}` -> value, and the declared types. */
function parseExposition(text: string): { samples: Map<string, number>; types: Map<string, string> } {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1] as string, type[2] as string);
    if (line === '' || line.startsWith('#')) continue;
    const sample = /^(\S+?(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!sample) throw new Error(`not an exposition line: ${line}`);
    samples.set(sample[1] as string, Number(sample[2]));
  }
  return { samples, types };
}

t.test('HDR histograms give cumulative Prometheus buckets and percentiles', async (t) => {
  const histogram = new LatencyHistogram();
  for (const seconds of [0.002, 0.004, 0.05, 0.05, 1.5]) histogram.record(seconds);
  histogram.record(0.02, 3);
  t.same(histogram.cumulativeCounts([0.001, 0.01, 0.1, 1, 10]), [0, 2, 7, 7, 8]);
  t.equal(histogram.count, 8);
  t.ok(Math.abs(histogram.sum - (0.002 + 0.004 + 0.1 + 1.5 + 0.06)) < 1e-9, 'sum is exact');
  const p = histogram.percentiles();
  t.ok(Math.abs(p.p50 - 0.02) < 0.0001 && Math.abs(p.max - 1.5) < 0.002, `percentiles within HDR precision (${JSON.stringify(p)})`);
});

t.test('metrics follow a real request', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const scrape = async (): Promise<ReturnType<typeof parseExposition>> => {
    const response = await fetch(`${server.url}/metrics`);
    t.equal(response.status, 200);
    t.match(response.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
    return parseExposition(await response.text());
  };

  const before = await scrape();
  t.equal(before.samples.get('mlx:model_state{state="unloaded"}'), 1, 'starts unloaded');
  t.equal(before.samples.get('mlx:num_requests_running'), 0);
  t.equal(before.samples.get('mlx:generation_tokens_total'), 0);
  t.equal(before.types.get('mlx:time_to_first_token_seconds'), 'histogram');
  t.equal(before.types.get('mlx:generation_tokens_total'), 'counter');

  const response = await fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'Hello there', max_tokens: 10, stream: true }),
  });
  await response.text();

  const { samples } = await scrape();
  t.equal(samples.get('mlx:model_state{state="loaded"}'), 1, 'the request loaded the model');
  t.equal(samples.get('mlx:model_info{model="tiny-qwen3",model_type="qwen3"}'), 1);
  t.ok((samples.get('mlx:model_bytes') ?? 0) > 0, 'model bytes');
  t.equal(samples.get('mlx:model_loads_total'), 1);
  t.ok((samples.get('mlx:model_load_seconds') ?? 0) > 0, 'load seconds');
  t.ok((samples.get('mlx:resident_memory_bytes') ?? 0) > 0, 'resident memory');
  t.equal(samples.get('mlx:requests_total'), 1);
  const generated = samples.get('mlx:generation_tokens_total') ?? 0;
  t.ok(generated > 0 && generated <= 10, `generated tokens counted (${generated})`);
  t.ok((samples.get('mlx:prompt_tokens_total') ?? 0) > 0, 'prompt tokens counted');
  const finished = ['stop', 'length'].map((reason) => samples.get(`mlx:request_success_total{finished_reason="${reason}"}`) ?? 0);
  t.equal(finished[0]! + finished[1]!, 1, 'one successful request');
  for (const name of ['time_to_first_token_seconds', 'e2e_request_latency_seconds', 'request_queue_time_seconds']) {
    t.equal(samples.get(`mlx:${name}_count`), 1, `${name}: one sample`);
    t.equal(samples.get(`mlx:${name}_bucket{le="+Inf"}`), 1, `${name}: +Inf bucket holds it`);
  }
  const buckets = [...samples].filter(([key]) => key.startsWith('mlx:e2e_request_latency_seconds_bucket')).map(([, value]) => value);
  t.ok(buckets.every((value, i) => i === 0 || value >= (buckets[i - 1] as number)), 'buckets are cumulative');
  const perToken = samples.get('mlx:time_per_output_token_seconds_count') ?? -1;
  t.ok(perToken >= 0 && perToken <= generated - 1, `at most one inter-token sample per token after the first (${perToken})`);
});
