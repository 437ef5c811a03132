/**
 * Stress scenarios against a running server: concurrent requests, one long streamed generation,
 * parallel sessions, memory under load, and errors mixed into valid load, ending with a metrics
 * table. Generation goes through Ollama's /api/generate where the server has it, so the same
 * suite measures Ollama-compatible servers alike, else /v1/completions.
 * Requests are greedy, so repeated prompts must give repeated answers: sessions that disturb each
 * other show up as different text, not only as errors.
 */
import { MemorySampler, SoakClient, sleep, type Generation } from './client.ts';
import { Reporter, finishSuite, gb, markdownTable, type SuiteResult } from './report.ts';

export interface StressOptions {
  concurrent: number;
  longTokens: number;
  sessions: number;
  sessionRounds: number;
  memoryRequests: number;
  validUnderErrors: number;
  invalidUnderErrors: number;
  /** Tokens per ordinary request. */
  tokens: number;
  /** Resident memory a finished burst may leave behind (the model stays loaded). */
  maxLoadGrowthGb: number;
}

export const STRESS_DEFAULTS: StressOptions = {
  concurrent: 5,
  longTokens: 600,
  sessions: 3,
  sessionRounds: 3,
  memoryRequests: 4,
  validUnderErrors: 3,
  invalidUnderErrors: 2,
  tokens: 32,
  maxLoadGrowthGb: 0.1,
};

export interface ScenarioRow {
  test: string;
  requests: number;
  succeeded: number;
  avgResponseSeconds: number;
  peakMemoryGb: number;
  passed: boolean;
}

export interface StressResult extends SuiteResult {
  suite: 'stress';
  api: string;
  rows: ScenarioRow[];
}

const average = (values: number[]): number => (values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length);

export function stressTable(rows: ScenarioRow[]): string[] {
  return markdownTable(
    ['Test', 'Requests', 'Success Rate', 'Avg Response Time', 'Peak Memory', 'Result'],
    rows.map((r) => [r.test, String(r.requests), `${Math.round((r.succeeded / Math.max(1, r.requests)) * 100)}%`, `${r.avgResponseSeconds.toFixed(2)}s`, `${r.peakMemoryGb.toFixed(2)}GB`, r.passed ? 'PASS' : 'FAIL']),
  );
}

export async function runStress(client: SoakClient, options: StressOptions, report: Reporter): Promise<StressResult> {
  const startedAt = new Date();
  const rows: ScenarioRow[] = [];
  const api = await client.generationApi();
  const generate = (prompt: string, maxTokens = options.tokens, stream = false): Promise<Generation> => client.generate({ prompt, maxTokens, stream, temperature: 0, seed: 7 });

  report.banner(['MLX Inference Server - Stress Test', `Server: ${client.url}`, `Model: ${client.model ?? '(server default)'}`, `Generation API: ${api === 'ollama' ? 'Ollama /api/generate' : 'OpenAI /v1/completions'}`, `Started: ${startedAt.toString()}`]);

  /** One scenario: a [TEST] block whose requests and memory peak become one table row. */
  const scenario = async (test: string, title: string, body: (row: ScenarioRow) => Promise<boolean>): Promise<void> => {
    report.test(title);
    const sampler = new MemorySampler(client, 250);
    const row: ScenarioRow = { test, requests: 0, succeeded: 0, avgResponseSeconds: 0, peakMemoryGb: 0, passed: false };
    sampler.start();
    try {
      row.passed = await body(row);
    } catch (error) {
      row.passed = report.fail(`error: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      row.peakMemoryGb = await sampler.stop();
      report.info(`Peak memory: ${gb(row.peakMemoryGb, 2)} (process resident, sampled every 250 ms)`);
      rows.push(row);
    }
  };
  const account = (row: ScenarioRow, results: Generation[]): void => {
    row.requests += results.length;
    row.succeeded += results.filter((g) => g.ok).length;
    row.avgResponseSeconds = average(results.map((g) => g.latencyMs / 1000));
    for (const g of results.filter((r) => !r.ok)) report.info(`  failed: ${g.error}`);
  };

  await scenario('Concurrent', 'Concurrent Requests - simultaneous generation requests', async (row) => {
    report.info(`Sending ${options.concurrent} requests at once...`);
    const results = await Promise.all(Array.from({ length: options.concurrent }, (_, i) => generate(`Request ${i + 1} from user ${i + 1}`)));
    account(row, results);
    const health = await client.health();
    if (row.succeeded !== row.requests) return report.fail(`${row.requests - row.succeeded} of ${row.requests} requests failed`);
    if (health.status !== 'healthy') return report.fail('Server not healthy afterwards');
    return report.pass(`All ${row.requests} concurrent requests completed; server remained responsive`);
  });

  await scenario('Long-running', 'Long-Running Generation - extended streamed content', async (row) => {
    report.info(`Streaming up to ${options.longTokens} tokens...`);
    const g = await generate('Write a 500-word story about a robot learning to paint', options.longTokens, true);
    account(row, [g]);
    if (!g.ok) return report.fail('The long generation failed');
    const words = g.text.split(/\s+/).filter(Boolean).length;
    const tokens = g.completionTokens ?? g.chunks;
    report.info(`Generated ${words} words in ${g.chunks} streamed chunks, ${tokens} tokens, ${(tokens / (g.latencyMs / 1000)).toFixed(1)} tok/s`);
    if (g.chunks < 2) return report.fail('The reply arrived in one piece: not streamed');
    return report.pass('Long generation streamed to the end');
  });

  await scenario('Multi-session', 'Multiple Sessions - simultaneous independent sessions', async (row) => {
    report.info(`${options.sessions} sessions, ${options.sessionRounds} requests each, running side by side (the last one streams)...`);
    const sessions = await Promise.all(
      Array.from({ length: options.sessions }, async (_, s) => {
        const results: Generation[] = [];
        for (let round = 0; round < options.sessionRounds; round++) results.push(await generate(`Session ${s + 1}`, options.tokens, s === options.sessions - 1));
        return results;
      }),
    );
    account(row, sessions.flat());
    let consistent = true;
    sessions.forEach((results, s) => {
      const texts = new Set(results.filter((g) => g.ok).map((g) => g.text));
      const latencies = results.map((g) => g.latencyMs / 1000);
      if (texts.size > 1) consistent = false;
      report.info(`  Session ${s + 1}: ${results.filter((g) => g.ok).length}/${results.length} OK, ${texts.size} distinct answer(s), ${Math.min(...latencies).toFixed(2)}-${Math.max(...latencies).toFixed(2)}s`);
    });
    if (row.succeeded !== row.requests) return report.fail(`${row.requests - row.succeeded} of ${row.requests} session requests failed`);
    if (!consistent) return report.fail('A session got different answers to the same greedy prompt: sessions interfere');
    return report.pass('All sessions completed with no interference');
  });

  await scenario('Memory', 'Memory Usage Under Load - resident memory during concurrent requests', async (row) => {
    // A warm-up request first: an idle unload since the last scenario must not count as growth.
    await generate('warm-up', 4);
    const before = (await client.status()).memory.rss_gb;
    report.info(`Resident before: ${gb(before)}; sending ${options.memoryRequests} concurrent requests...`);
    const results = await Promise.all(Array.from({ length: options.memoryRequests }, (_, i) => generate(`Request ${i + 1}`, options.tokens * 2)));
    account(row, results);
    let health = await client.health();
    for (let i = 0; i < 50 && health.active_requests > 0; i++) {
      await sleep(100);
      health = await client.health();
    }
    const after = (await client.status()).memory.rss_gb;
    report.info(`Resident after: ${gb(after)} (growth ${gb(after - before)}, limit ${options.maxLoadGrowthGb} GB)`);
    if (row.succeeded !== row.requests) return report.fail(`${row.requests - row.succeeded} of ${row.requests} requests failed`);
    if (after - before >= options.maxLoadGrowthGb) return report.fail('Memory was not released after the requests completed');
    return report.pass('Memory stable under load and released afterwards');
  });

  await scenario('Errors', 'Error Handling Under Load - invalid requests mixed with valid ones', async (row) => {
    report.info(`${options.validUnderErrors} valid requests, ${options.invalidUnderErrors} for a nonexistent model and 1 malformed body, all at once...`);
    const started = performance.now();
    const malformed = client.postJson(api === 'ollama' ? '/api/generate' : '/v1/completions', '{"prompt": ').then((r) => ({ ...r, latencyMs: performance.now() - started }));
    const [valid, invalid, broken] = await Promise.all([
      Promise.all(Array.from({ length: options.validUnderErrors }, (_, i) => generate(`Valid request ${i + 1}`))),
      Promise.all(Array.from({ length: options.invalidUnderErrors }, (_, i) => client.generate({ prompt: `Invalid ${i + 1}`, maxTokens: 8, model: 'nonexistent-model' }))),
      malformed,
    ]);
    const properError = (status: number, message: string | null): boolean => status >= 400 && status < 500 && !!message;
    const invalidHandled = invalid.filter((g) => !g.ok && properError(g.status, g.error));
    const brokenHandled = properError(broken.status, JSON.stringify(broken.body));
    for (const g of invalid) report.info(`  nonexistent model -> ${g.error?.slice(0, 120)}`);
    report.info(`  malformed body -> HTTP ${broken.status} ${JSON.stringify(broken.body).slice(0, 100)}`);
    row.requests = valid.length + invalid.length + 1;
    row.succeeded = valid.filter((g) => g.ok).length + invalidHandled.length + (brokenHandled ? 1 : 0);
    row.avgResponseSeconds = average([...valid, ...invalid].map((g) => g.latencyMs / 1000).concat(broken.latencyMs / 1000));
    const health = await client.health();
    if (valid.some((g) => !g.ok)) return report.fail('A valid request failed while invalid ones were in flight');
    if (invalidHandled.length !== invalid.length || !brokenHandled) return report.fail('An invalid request did not get a 4xx with an error message');
    if (health.status !== 'healthy') return report.fail('Server not healthy afterwards');
    return report.pass('Valid requests completed; invalid ones got proper errors; server stable');
  });

  report.line('');
  report.line('Performance Metrics (success rate counts invalid requests answered with a proper 4xx as successes)');
  report.line('');
  for (const line of stressTable(rows)) report.line(line);
  return { ...finishSuite('stress', client, report, startedAt, 'ALL STRESS SCENARIOS PASSED'), api, rows };
}
