/** The `mlx-server` client commands, spawned as a user runs them, against a real server. */
import t from 'tap';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { cli } from './helpers/cli.ts';
import { json, serverStatus, startServer, TEST_CACHE_DIR } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0', '--default-max-tokens', '5']);
t.teardown(() => server.stop());
const host = ['--host', server.url];

t.test('without a server, client commands say so, and where they looked', async (t) => {
  const runs = await Promise.all([
    cli(['ps', '--host', 'http://127.0.0.1:65531']),
    cli(['ps'], '', { MLX_SERVER_URL: 'http://127.0.0.1:65531', MLX_SERVER_HOST: '127.0.0.1' }),
    cli(['run', 'tiny-qwen3', 'Hi'], '', { MLX_SERVER_URL: '', MLX_SERVER_HOST: '127.0.0.1:65531' }),
  ]);
  for (const [r, source] of runs.map((r, i) => [r, ['--host', 'MLX_SERVER_URL', 'MLX_SERVER_HOST'][i]] as const)) {
    t.equal(r.code, 1);
    t.match(r.stderr, `no mlx-server is running at http://127.0.0.1:65531 (from ${source}`, `${source} names the server, and the message says it was read from there`);
    t.match(r.stderr, /mlx-server serve/);
  }
});

t.test("MLX_SERVER_URL is the clients' own variable: a bind address in MLX_SERVER_HOST does not redirect them", async (t) => {
  const r = await cli(['list'], '', { MLX_SERVER_URL: server.url, MLX_SERVER_HOST: '127.0.0.1', MLX_SERVER_PORT: '1' });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /tiny-qwen3/);
});

t.test('help lists the client commands', async (t) => {
  const r = await cli(['help']);
  t.equal(r.code, 0);
  for (const command of ['run MODEL', 'ps', 'list', 'show MODEL', 'stop MODEL', 'MLX_SERVER_URL', 'MLX_SERVER_HOST']) t.match(r.stdout, command);
  t.match(r.stdout, /built-in tiny-qwen3 has random weights: it writes meaningless text/, 'a newcomer is told the built-in model writes noise');
  t.match(r.stdout, /--default-max-tokens \(2048\)/, 'and where an answer stops when no limit is given');
});

t.test('list and show', async (t) => {
  const [list, show, missing] = await Promise.all([cli(['list', ...host]), cli(['show', 'tiny-qwen3', ...host]), cli(['show', 'no-such-model', ...host])]);
  t.equal(list.code, 0);
  t.match(list.stdout, /^NAME\s+ID\s+SIZE\s+MODIFIED/);
  t.match(list.stdout, /tiny-qwen3\s+[0-9a-f]{12}\s+\d+ MB/);
  t.equal(show.code, 0);
  t.match(show.stdout, /architecture\s+qwen3/);
  t.match(show.stdout, /context length\s+4096/);
  t.match(show.stdout, /parameters\s+39\.7M\n/, 'parameters counted from the weights, as Ollama shows them');
  t.match(show.stdout, /Capabilities\s+completion/);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /model 'no-such-model' not found.*HTTP 404/);
});

t.test('run answers a prompt given as arguments or piped in', async (t) => {
  const [args, piped, empty, missing] = await Promise.all([
    cli(['run', 'tiny-qwen3', 'Why', 'is', 'the', 'sky', 'blue?', '--num-predict', '8', '--temperature', '0', '--verbose', ...host]),
    cli(['run', 'tiny-qwen3', '--num-predict', '8', '--temperature', '0', ...host], 'Why is the sky blue?\n'),
    cli(['run', 'tiny-qwen3', ...host], ''),
    cli(['run', 'no-such-model', 'Hi', ...host]),
  ]);
  t.equal(args.code, 0, args.stderr);
  t.ok(args.stdout.trim().length > 0, 'an answer on stdout');
  t.match(args.stderr, /eval count:\s+8 token/, '--verbose prints the stats on stderr');
  t.equal(piped.code, 0, piped.stderr);
  t.equal(piped.stdout, args.stdout, 'a piped prompt gets the same answer');
  t.equal(empty.code, 1);
  t.match(empty.stderr, /piped input was empty/);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /not found/);
});

t.test("run without --num-predict stops at the server's default limit", async (t) => {
  const r = await cli(['run', 'tiny-qwen3', 'Hi', '--temperature', '0', '--verbose', ...host]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /eval count:\s+5 token/);
});

/** A size as the command line prints it: decimal megabytes, rounded. */
const megabytes = (bytes: number): string => `${Math.round(bytes / 1e6)} MB`;

t.test('ps and stop', async (t) => {
  await cli(['run', 'tiny-qwen3', 'Hi', '--num-predict', '2', '--keepalive', '10m', ...host]);
  const ps = await cli(['ps', ...host]);
  t.equal(ps.code, 0);
  t.match(ps.stdout, /^NAME\s+SIZE\s+PROCESSOR\s+CONTEXT\s+UNTIL/);
  t.match(ps.stdout, /tiny-qwen3\s+\d+ MB\s+100% (CPU|GPU)\s+4096\s+\d+ minutes from now/);
  const stop = await cli(['stop', 'tiny-qwen3', ...host]);
  t.equal(stop.code, 0, stop.stderr);
  const after = await cli(['ps', ...host]);
  t.notMatch(after.stdout, /tiny-qwen3/, 'stopped');
  const again = await cli(['stop', 'tiny-qwen3', ...host]);
  t.equal(again.code, 1);
  t.match(again.stderr, /not loaded/);
});

t.test('list shows the size on disk and ps the weights in memory, each as the API and status report it', async (t) => {
  await cli(['run', 'tiny-qwen3', 'Hi', '--num-predict', '1', '--keepalive', '10m', ...host]);
  const [list, ps, tags, running, status] = await Promise.all([
    cli(['list', ...host]),
    cli(['ps', ...host]),
    json<{ models: { name: string; size: number; model?: string }[] }>(`${server.url}/api/tags`),
    json<{ models: { name: string; size: number }[] }>(`${server.url}/api/ps`),
    serverStatus(server.url),
  ]);
  const folder = join(TEST_CACHE_DIR, 'tiny-qwen3');
  const onDisk = readdirSync(folder).reduce((sum, file) => sum + statSync(join(folder, file)).size, 0);
  const listed = tags.body.models.find((m) => m.name === 'tiny-qwen3');
  t.equal(listed?.size, onDisk, '/api/tags: the bytes of the model folder on disk');
  t.match(list.stdout, new RegExp(`tiny-qwen3\\s+[0-9a-f]{12}\\s+${megabytes(onDisk)}\\s`), `list prints ${megabytes(onDisk)}`);
  const inMemory = running.body.models[0]?.size ?? 0;
  t.ok(Math.abs(inMemory / 2 ** 30 - status.memory.model_memory_gb) < 1e-4, `/api/ps (${inMemory} bytes) and status model_memory_gb (${status.memory.model_memory_gb} GiB) are the same weights`);
  t.match(ps.stdout, new RegExp(`tiny-qwen3\\s+${megabytes(inMemory)}\\s`), `ps prints ${megabytes(inMemory)}`);
  t.equal(megabytes(inMemory), '159 MB', 'the figure the README and docs quote for the built-in model');
  t.equal(megabytes(onDisk), '170 MB', 'the on-disk figure the docs quote');
  await cli(['stop', 'tiny-qwen3', ...host]);
});
