/**
 * Debian's nginx on loopback in front of test servers, configured from deploy/nginx/mlx-server.conf
 * itself (only its upstream servers and listen port are replaced), so the tests exercise the
 * configuration operators deploy.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../bench/server-process.ts';
import { tempDir } from './server.ts';

export { freePort };

const TEMPLATE = fileURLToPath(new URL('../../deploy/nginx/mlx-server.conf', import.meta.url));
const CANDIDATES = ['/usr/sbin/nginx', '/usr/bin/nginx'];

/** The nginx binary, installed with apt-get when missing and permitted; else why there is none. */
export function findNginx(): { path: string } | { missing: string } {
  const found = (): string | undefined => CANDIDATES.find((path) => existsSync(path));
  if (found()) return { path: found() as string };
  try {
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'nginx-light'], { stdio: 'ignore', timeout: 180_000 });
  } catch (error) {
    return { missing: `nginx is not installed and 'apt-get install nginx-light' failed (${(error as Error).message.split('\n')[0]}); install Debian's nginx-light or nginx` };
  }
  return found() ? { path: found() as string } : { missing: 'nginx-light installed but no nginx binary found' };
}

/** deploy/nginx/mlx-server.conf with its upstream pointed at `upstreamPorts` and listening on `listenPort`. */
export function renderFleetConfig(upstreamPorts: number[], listenPort: number): string {
  const template = readFileSync(TEMPLATE, 'utf8');
  const serverLine = /^(\s*)server 127\.0\.0\.1:\d+ (.*);$/m;
  const match = serverLine.exec(template);
  if (!match) throw new Error(`${TEMPLATE} has no 'server 127.0.0.1:PORT ...;' upstream line`);
  const [, indent, options] = match;
  const servers = upstreamPorts.map((port) => `${indent}server 127.0.0.1:${port} ${options};`).join('\n');
  const withoutServers = template.replace(new RegExp(serverLine.source, 'gm'), '').replace(/\n{2,}(\s*keepalive)/, `\n${servers}\n$1`);
  return withoutServers.replace(/listen \d+;/, `listen 127.0.0.1:${listenPort};`);
}

export interface RunningNginx {
  url: string;
  process: ChildProcess;
  errorLog(): string;
  stop(): Promise<void>;
}

export async function startNginx(binary: string, upstreamPorts: number[]): Promise<RunningNginx> {
  const dir = tempDir('mlx-nginx-');
  const port = await freePort();
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub));
  writeFileSync(join(dir, 'mlx-server.conf'), renderFleetConfig(upstreamPorts, port));
  writeFileSync(
    join(dir, 'nginx.conf'),
    [
      // As root, nginx's workers would drop to 'nobody', which cannot use this private folder.
      process.getuid?.() === 0 ? 'user root;' : '',
      'worker_processes 1;',
      'daemon off;',
      `pid ${dir}/nginx.pid;`,
      `error_log ${dir}/error.log warn;`,
      'events { worker_connections 512; }',
      'http {',
      `  access_log ${dir}/access.log;`,
      ...['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((sub) => `  ${sub === 'body' ? 'client_body' : sub}_temp_path ${dir}/${sub};`),
      `  include ${dir}/mlx-server.conf;`,
      '}',
    ].join('\n'),
  );
  const child = spawn(binary, ['-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // A test killed by its runner's timeout runs no teardown: nginx must not outlive it.
  const stopOnExit = (): void => void child.kill('SIGTERM');
  process.once('exit', stopOnExit);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const errorLog = (): string => `${stderr}${existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : ''}`;
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}:\n${errorLog()}`);
    const up = await fetch(`${url}/admin/health`).then((r) => r.ok, () => false);
    if (up) break;
    if (Date.now() > deadline) throw new Error(`nginx did not answer on ${url}:\n${errorLog()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return {
    url,
    process: child,
    errorLog,
    stop: async () => {
      process.off('exit', stopOnExit);
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
