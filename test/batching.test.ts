/** Continuous batching: a request's output is the same alone or inside a batch, batched rows share forward passes, and rows leave independently. */
import t from 'tap';
import { forwardPassCounters, post, startServer } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0', '--max-batch', '4', '--prefill-chunk', '16']);
t.teardown(() => server.stop());
const { url } = server;

const requests = [
  { prompt: 'The first row', max_tokens: 30, temperature: 0 },
  { prompt: 'A second, longer prompt that takes more than one prefill chunk of sixteen tokens to get through', max_tokens: 12, temperature: 0 },
  { prompt: 'Third', max_tokens: 40, temperature: 0.8, top_k: 20, seed: 11 },
  { prompt: 'Fourth row here', max_tokens: 25, temperature: 1.0, top_p: 0.9, seed: 5 },
  { prompt: 'Fifth waits for a free row', max_tokens: 20, temperature: 0, repetition_penalty: 1.2 },
  { prompt: 'Sixth', max_tokens: 8, temperature: 0 },
];
const complete = (body: Record<string, unknown>) => post(`${url}/v1/completions`, { ...body, ignore_eos: true });


t.test('each request gives the same text alone and in a batch larger than --max-batch', async (t) => {
  const alone: string[] = [];
  for (const request of requests) alone.push((await complete(request)).body.choices[0].text);
  const before = await forwardPassCounters(url);
  const together = await Promise.all(requests.map((request) => complete(request)));
  together.forEach((response, i) => {
    t.equal(response.status, 200);
    t.equal(response.body.usage.completion_tokens, requests[i]?.max_tokens);
    t.equal(response.body.choices[0].text, alone[i], `row ${i} matches its solo run`);
  });
  // Rows decoded together share one forward pass per step: far fewer passes than tokens, and
  // each pass carries several sequences on average.
  const after = await forwardPassCounters(url);
  const passes = after.passes - before.passes;
  const sequences = after.sequences - before.sequences;
  const generated = after.generated - before.generated;
  t.ok(passes < generated * 0.6, `${passes} forward passes generated ${generated} tokens`);
  t.ok(sequences / passes > 2, `${(sequences / passes).toFixed(2)} sequences per forward pass`);
});

t.test('a row cancelled mid-stream leaves the others untouched', async (t) => {
  const others = requests.slice(0, 3);
  const alone: string[] = [];
  for (const request of others) alone.push((await complete(request)).body.choices[0].text);
  const controller = new AbortController();
  const doomed = fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ prompt: 'cancel me', max_tokens: 500, ignore_eos: true, stream: true }),
    signal: controller.signal,
  }).then(async (response) => {
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    await reader.read();
    controller.abort();
  });
  const together = await Promise.all(others.map((request) => complete(request)));
  await doomed.catch(() => undefined);
  together.forEach((response, i) => t.equal(response.body.choices[0].text, alone[i], `row ${i} unaffected by the cancelled row`));
  const cancelled = server.logs.filter((line) => line.includes('"event":"cancelled"'));
  t.equal(cancelled.length, 1, 'exactly one generation was cancelled');
});
