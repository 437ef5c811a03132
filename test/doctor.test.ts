/** `mlx-server doctor`: the one command a user runs to see the platform, the MLX device and whether unloading gives memory back. */
import t from 'tap';
import { cli } from './helpers/cli.ts';
import { TEST_CACHE_DIR } from './helpers/server.ts';

t.test('doctor prints the platform and device, memory around a load and an unload, and a verdict its exit code agrees with', async (t) => {
  const { code, stdout, stderr } = await cli(['doctor', '--cache-dir', TEST_CACHE_DIR]);
  t.comment(stdout);
  t.ok(code === 0 || code === 1, `the check ran to a verdict (exit ${code}; ${stderr.slice(-500)})`);
  t.match(stdout, /^platform\n {2}os +linux /m);
  t.match(stdout, /^mlx device\n {2}default +Device\(cpu, 0\)\n {2}metal +not available/m, 'this machine runs the CPU build');
  t.match(stdout, /^ {2}name +tiny-qwen3 \(qwen3, /m, 'the default model was loaded');
  const rows = Object.fromEntries(
    [...stdout.matchAll(/^ {2}(process resident|active_memory_gb|cache_memory_gb) +([\d.]+) +([\d.]+) +([\d.]+)$/gm)].map((m) => [m[1], [Number(m[2]), Number(m[3]), Number(m[4])]]),
  ) as Record<string, [number, number, number]>;
  const [rssBefore, rssLoaded, rssAfter] = rows['process resident'] ?? [];
  t.ok(rssLoaded !== undefined && rssBefore !== undefined && rssLoaded > rssBefore, `loading raised resident memory (${rssBefore} -> ${rssLoaded} GB)`);
  t.same(rows['cache_memory_gb'], [0, 0, 0], 'no MLX buffer cache on the CPU');
  t.equal(rows['active_memory_gb']?.[2], 0, 'nothing is active after the unload');
  const percent = Number(/^ {2}process resident +([\d.]+)%$/m.exec(stdout)?.[1]);
  // The percentage is printed to two decimals, so compare within rounding, not by rounding both.
  const fromPrinted = (((rssLoaded ?? 0) - (rssAfter ?? 0)) / ((rssLoaded ?? 0) - (rssBefore ?? 0))) * 100;
  t.ok(Math.abs(percent - fromPrinted) < 0.5, `the recovery (${percent}%) is what the printed figures give (${fromPrinted.toFixed(2)}%)`);
  t.match(stdout, percent >= 95 ? /^verdict: PASS/m : /^verdict: FAIL/m);
  t.equal(code, percent >= 95 ? 0 : 1);
});

t.test('doctor refuses a malformed threshold before starting anything', async (t) => {
  const { code, stderr } = await cli(['doctor', '--min-recovery', 'most']);
  t.equal(code, 2);
  t.match(stderr, /--min-recovery must be a percentage, got 'most'/);
});
