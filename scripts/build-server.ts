/**
 * Builds dist/ ahead of time, for installs the server may not write to (a systemd unit with
 * ProtectSystem=strict): `mlx-server serve` then finds the bundle current and leaves it alone.
 */
import { buildServerBundle } from '../src/cli/bundle.ts';
import { buildThreadPoolAddon } from '../src/cli/thread-pool-addon.ts';

const problem = await buildServerBundle();
if (problem !== null) {
  process.stderr.write(`cannot build dist/: ${problem}\n`);
  process.exit(1);
}
const noThreadPool = buildThreadPoolAddon();
if (noThreadPool !== null) process.stderr.write(`dist/ggml-threadpool.node not built: ${noThreadPool}\n`);
