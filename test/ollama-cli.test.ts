/** The `mlx-server` client commands, spawned as a user runs them, against a real server. */
import t from 'tap';
import { cli } from './helpers/cli.ts';
import { startServer } from './helpers/server.ts';

const server = await startServer(['--idle-timeout', '0']);
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
});

t.test('list and show', async (t) => {
  const [list, show, missing] = await Promise.all([cli(['list', ...host]), cli(['show', 'tiny-qwen3', ...host]), cli(['show', 'no-such-model', ...host])]);
  t.equal(list.code, 0);
  t.match(list.stdout, /^NAME\s+ID\s+SIZE\s+MODIFIED/);
  t.match(list.stdout, /tiny-qwen3\s+[0-9a-f]{12}\s+\d+ MB/);
  t.equal(show.code, 0);
  t.match(show.stdout, /architecture\s+qwen3/);
  t.match(show.stdout, /context length\s+4096/);
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
