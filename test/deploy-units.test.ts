/** deploy/systemd: the unit files pass `systemd-analyze verify` (an instance of the template, and the target). */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { tempDir } from './helpers/server.ts';

const ANALYZE = '/usr/bin/systemd-analyze';
const UNITS = fileURLToPath(new URL('../deploy/systemd/', import.meta.url));

if (!existsSync(ANALYZE)) {
  t.plan(0, `skipped: ${ANALYZE} is missing (Debian's systemd package)`);
} else {
  t.test('systemd units verify', async (t) => {
    const dir = tempDir('mlx-units-');
    for (const unit of ['mlx-server@.service', 'mlx-server.target']) copyFileSync(join(UNITS, unit), join(dir, unit));
    symlinkSync('mlx-server@.service', join(dir, 'mlx-server@11437.service'));
    const output = execFileSync(ANALYZE, ['verify', '--man=no', 'mlx-server@11437.service', 'mlx-server.target'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    t.equal(output.trim(), '', 'no complaints');
  });
}

t.test('the launchd agent starts `serve` and sets only settings the server knows', async (t) => {
  const { envName, FLAGS } = await import('../src/config.ts');
  const plist = readFileSync(fileURLToPath(new URL('../deploy/launchd/com.mlx-inference-server.plist', import.meta.url)), 'utf8');
  t.match(plist, /<string>[^<]*bin\/mlx-server\.js<\/string>\s*<string>serve<\/string>/);
  const known = new Set(FLAGS.map((flag) => envName(flag.flag)));
  const settings = [...plist.matchAll(/<key>(MLX_SERVER_[A-Z_]+)<\/key>/g)].map((match) => match[1] as string);
  t.ok(settings.length > 0);
  for (const name of settings) t.ok(known.has(name), `${name} is a flag's environment twin`);
});
