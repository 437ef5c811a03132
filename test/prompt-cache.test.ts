/** The prompt cache: a shared prefix is prefilled once, reported as cached tokens, and changes no output. */
import t from 'tap';
import { post, startServer } from './helpers/server.ts';

const cached = await startServer(['--idle-timeout', '0']);
const uncached = await startServer(['--idle-timeout', '0', '--prompt-cache-bytes', '0']);
t.teardown(async () => {
  await cached.stop();
  await uncached.stop();
});

const system = { role: 'system', content: `You are a careful assistant. ${'Answer briefly and precisely. '.repeat(40)}` };
const chat = (url: string, messages: unknown[]) => post(`${url}/v1/chat/completions`, { messages, max_tokens: 10, temperature: 0, ignore_eos: true });

t.test('a shared system prompt is served from the cache, with the same answer', async (t) => {
  const first = await chat(cached.url, [system, { role: 'user', content: 'What is MLX?' }]);
  t.equal(first.body.usage.prompt_tokens_details.cached_tokens, 0, 'cold: nothing cached');
  const question = [system, { role: 'user', content: 'And what is a KV cache?' }];
  const second = await chat(cached.url, question);
  const reference = await chat(uncached.url, question);
  const hits = second.body.usage.prompt_tokens_details.cached_tokens as number;
  t.ok(hits > 200, `${hits} of ${second.body.usage.prompt_tokens} prompt tokens came from the cache`);
  t.ok(hits < second.body.usage.prompt_tokens, 'the new question itself is prefilled');
  t.equal(reference.body.usage.prompt_tokens_details.cached_tokens, 0, 'disabled cache: no hits');
  t.equal(second.body.choices[0].message.content, reference.body.choices[0].message.content, 'same answer as without the cache');
});

t.test('the next turn of a chat reuses the whole previous turn', async (t) => {
  const turn1 = [system, { role: 'user', content: 'Tell me a story.' }];
  const first = await chat(cached.url, turn1);
  const answer = first.body.choices[0].message.content as string;
  const turn2 = [...turn1, { role: 'assistant', content: answer }, { role: 'user', content: 'Go on.' }];
  const second = await chat(cached.url, turn2);
  const reference = await chat(uncached.url, turn2);
  t.ok(second.body.usage.prompt_tokens_details.cached_tokens >= first.body.usage.prompt_tokens - 1, 'at least the whole first prompt is reused');
  t.equal(second.body.choices[0].message.content, reference.body.choices[0].message.content);
});
