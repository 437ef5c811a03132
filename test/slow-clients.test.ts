import net from 'node:net';
import { pino } from 'pino';
import t from 'tap';
import type { Exchange } from '../src/http/exchange.ts';
import { openAiError } from '../src/api/errors.ts';
import { startHttpServer, type HttpOptions, type Route } from '../src/http/server.ts';
import { parseResponses } from './helpers/raw-http.ts';
import { json, post, serverStatus, startServer } from './helpers/server.ts';

const KB = 1024;
const MB = 1024 * KB;

function httpOptions(maxStreamBufferBytes: number): HttpOptions {
  return { host: '127.0.0.1', port: 0, apiKey: null, adminKey: null, corsOrigins: [], bodyTimeoutSeconds: 60, maxStreamBufferBytes, logger: pino({ level: 'silent' }), unknownPathErrors: openAiError };
}

/** Opens a request and never reads the answer: the socket stays paused until destroyed. */
function neverReading(port: number, request: string): net.Socket {
  const socket = net.connect(port, '127.0.0.1', () => socket.write(request));
  socket.pause();
  socket.on('error', () => {});
  return socket;
}

const until = async (what: string, check: () => Promise<boolean> | boolean, limitMs = 60_000): Promise<void> => {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
};

t.test('a stream nobody reads is dropped past --max-stream-buffer; other clients are served meanwhile', async (t) => {
  let firehose: Exchange | null = null;
  let written = 0;
  const routes: Route[] = [
    { method: 'GET', path: '/ping', errors: openAiError, handler: (exchange) => exchange.json(200, { pong: true }) },
    {
      method: 'GET',
      path: '/firehose',
      errors: openAiError,
      handler: (exchange) =>
        new Promise<void>((resolve) => {
          firehose = exchange;
          exchange.startStream('text/event-stream');
          const chunk = `data: ${'x'.repeat(64 * KB)}\n\n`;
          // A bounded producer, so a broken drop cannot run the test out of memory.
          const timer = setInterval(() => {
            exchange.write(chunk);
            written += chunk.length;
            if (written > 256 * MB) exchange.end();
          }, 1);
          exchange.onAbort(() => {
            clearInterval(timer);
            resolve();
          });
        }),
    },
  ];
  const server = await startHttpServer(routes, httpOptions(512 * KB));
  t.teardown(() => server.close());
  const socket = neverReading(server.port, 'GET /firehose HTTP/1.1\r\nHost: x\r\n\r\n');
  t.teardown(() => socket.destroy());
  await until('the stream to start', () => firehose !== null);
  const pings = await Promise.all(Array.from({ length: 20 }, () => json(`http://127.0.0.1:${server.port}/ping`)));
  t.ok(pings.every((p) => p.status === 200), 'other clients are answered while the stream is stuck');
  await until('the stuck stream to be dropped', () => (firehose as Exchange | null)?.aborted === true);
  const stuck = firehose as unknown as Exchange;
  t.equal(stuck.dropped, 'stream_backpressure', 'dropped for backpressure, which the engine sees as an abort');
  t.ok(written < 256 * MB, `dropped after ${Math.round(written / MB)} MB were produced (kernel buffers take a few MB first)`);
});

t.test('a client that reads slowly gets every byte, in order, and the end', async (t) => {
  const chunks = Array.from({ length: 300 }, (_, i) => `${String(i).padStart(6, '0')}${'y'.repeat(32 * KB)}\n`);
  const routes: Route[] = [
    {
      method: 'GET',
      path: '/numbered',
      errors: openAiError,
      handler: (exchange) => {
        exchange.startStream('text/plain');
        // All at once: past the socket buffers the rest waits in Exchange until the client drains it.
        for (const chunk of chunks) exchange.write(chunk);
        exchange.end('END');
      },
    },
  ];
  const server = await startHttpServer(routes, httpOptions(64 * MB));
  t.teardown(() => server.close());
  const received = await new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const socket = net.connect(server.port, '127.0.0.1', () => socket.write('GET /numbered HTTP/1.1\r\nHost: x\r\n\r\n'));
    socket.pause();
    setTimeout(() => socket.resume(), 1000);
    socket.on('data', (data: Buffer) => {
      parts.push(data);
      size += data.length;
      if (size % (2 * MB) < data.length) {
        socket.pause();
        setTimeout(() => socket.resume(), 50);
      }
      const { responses } = parseResponses(Buffer.concat(parts));
      if (responses.length === 1) {
        socket.destroy();
        resolve((responses[0] as { body: Buffer }).body);
      }
    });
    socket.on('error', reject);
  });
  t.equal(received.toString(), chunks.join('') + 'END', `all ${Math.round(received.length / MB)} MB arrived intact`);
});

t.test('slow requests against the real server', async (t) => {
  const server = await startServer(['--idle-timeout', '0', '--body-timeout', '2']);
  t.teardown(() => server.stop());

  t.test('a body trickling in is answered 408 and dropped after --body-timeout', async (t) => {
    const socket = net.connect(server.port, '127.0.0.1');
    const parts: Buffer[] = [];
    socket.on('data', (data: Buffer) => parts.push(data));
    socket.on('error', () => {});
    socket.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{');
    const trickle = setInterval(() => socket.writable && socket.write(' '), 250);
    await new Promise((resolve) => socket.on('close', resolve));
    clearInterval(trickle);
    const answer = Buffer.concat(parts).toString();
    t.ok(answer === '' || answer.startsWith('HTTP/1.1 408'), `closed with ${answer ? '408' : 'no answer'}`);
    await until('the drop to be logged', () => server.logs.some((line) => line.includes('"dropped":"body_timeout"')), 10_000);
  });

  t.test('headers trickling in are dropped by uWS (10 s after the connection opened)', async (t) => {
    const socket = net.connect(server.port, '127.0.0.1');
    const parts: Buffer[] = [];
    socket.on('data', (data: Buffer) => parts.push(data));
    socket.on('error', () => {});
    socket.write('GET /admin/health HTTP/1.1\r\nHost: x\r\n');
    const trickle = setInterval(() => socket.writable && socket.write('X'), 500);
    const opened = Date.now();
    await new Promise((resolve) => socket.on('close', resolve));
    clearInterval(trickle);
    t.equal(Buffer.concat(parts).length, 0, 'no answer, just closed');
    t.comment(`closed after ${((Date.now() - opened) / 1000).toFixed(1)} s`);
  });

  t.test('a streaming client that never reads does not block others, and its generation is cancelled when it goes', async (t) => {
    const body = JSON.stringify({ prompt: 'Once upon a time', max_tokens: 3000, ignore_eos: true, stream: true });
    const socket = neverReading(server.port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    const active = async (): Promise<number> => (await serverStatus(server.url)).requests.active;
    await until('the stuck stream to be generating', async () => (await active()) >= 1);
    const others = await Promise.all(Array.from({ length: 3 }, (_, i) => post(`${server.url}/v1/completions`, { prompt: `hello ${i}`, max_tokens: 4 })));
    t.same(others.map((r) => r.status), [200, 200, 200], 'other requests complete while it is stuck');
    t.equal(await active(), 1, 'the stuck generation is still running (its output sits in socket buffers)');
    socket.destroy();
    const cancelled = (): { tokensAfterCancel: number }[] =>
      server.logs.filter((line) => line.includes('"event":"cancelled"') && line.includes('"reason":"client"')).map((line) => JSON.parse(line) as { tokensAfterCancel: number });
    await until('the generation to be cancelled', () => cancelled().length > 0, 60_000);
    t.ok((cancelled()[0] as { tokensAfterCancel: number }).tokensAfterCancel <= 2, `cancelled because its client left, ${cancelled()[0]?.tokensAfterCancel} tokens after it went`);
    await until('its slot to be freed', async () => (await active()) === 0, 30_000);
  });
});
