/** Server settings: every flag has an environment twin MLX_SERVER_<FLAG>; a flag wins over its twin. */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

export interface ServerConfig {
  host: string;
  port: number;
  model: string | null;
  modelsDirs: string[];
  idleTimeoutSeconds: number;
  logLevel: string;
  logFile: string | null;
  maxQueue: number;
  maxBodyBytes: number;
  cacheDir: string;
  requestTimeoutSeconds: number;
  shutdownTimeoutSeconds: number;
  memoryReserveBytes: number;
}

interface FlagSpec {
  flag: string;
  help: string;
  default: string;
  multiple?: boolean;
}

export const FLAGS: FlagSpec[] = [
  { flag: 'host', help: 'address to bind', default: '127.0.0.1' },
  { flag: 'port', help: 'port to listen on (0 picks a free one)', default: '11437' },
  { flag: 'model', help: 'default model: a name or a folder path (built-in tiny-qwen3 when unset)', default: '' },
  { flag: 'models-dir', help: 'folder whose subfolders holding a config.json are models (repeatable; env: comma-separated)', default: '', multiple: true },
  { flag: 'idle-timeout', help: 'seconds without requests before the model is unloaded (0 disables)', default: '180' },
  { flag: 'log-level', help: 'pino level: fatal, error, warn, info, debug, trace', default: 'info' },
  { flag: 'log-file', help: 'also write logs to this file', default: '' },
  { flag: 'max-queue', help: 'requests allowed to wait for the model before 503', default: '256' },
  { flag: 'max-body', help: 'largest request body in bytes (413 above)', default: String(10 * 1024 * 1024) },
  { flag: 'request-timeout', help: 'seconds a request may take in all before it is cancelled (0: no limit)', default: '600' },
  { flag: 'shutdown-timeout', help: 'seconds SIGTERM waits for running generations before cancelling them', default: '30' },
  { flag: 'memory-reserve', help: 'bytes of available memory a model load must leave free', default: String(512 * 1024 * 1024) },
  { flag: 'cache-dir', help: 'where the built-in model is written', default: join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'mlx-inference-server') },
];

export const envName = (flag: string): string => `MLX_SERVER_${flag.toUpperCase().replaceAll('-', '_')}`;

export class ConfigError extends Error {}

function integer(flag: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`--${flag} must be an integer >= ${min}, got '${value}'`);
  return n;
}

export function parseServerConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const { values } = parseArgs({
    args: argv,
    options: Object.fromEntries(FLAGS.map((f) => [f.flag, { type: 'string', multiple: f.multiple ?? false }])),
    strict: true,
    allowPositionals: false,
  });
  const value = (spec: FlagSpec): string => {
    const given = values[spec.flag];
    if (typeof given === 'string') return given;
    return env[envName(spec.flag)] ?? spec.default;
  };
  const get = (flag: string): string => value(FLAGS.find((f) => f.flag === flag) as FlagSpec);
  const dirs = values['models-dir'];
  const modelsDirs = Array.isArray(dirs) && dirs.length > 0 ? dirs.map(String) : get('models-dir').split(',').filter(Boolean);
  return {
    host: get('host'),
    port: integer('port', get('port'), 0),
    model: get('model') || null,
    modelsDirs,
    idleTimeoutSeconds: integer('idle-timeout', get('idle-timeout'), 0),
    logLevel: get('log-level'),
    logFile: get('log-file') || null,
    maxQueue: integer('max-queue', get('max-queue'), 0),
    maxBodyBytes: integer('max-body', get('max-body'), 1),
    cacheDir: get('cache-dir'),
    requestTimeoutSeconds: integer('request-timeout', get('request-timeout'), 0),
    shutdownTimeoutSeconds: integer('shutdown-timeout', get('shutdown-timeout'), 0),
    memoryReserveBytes: integer('memory-reserve', get('memory-reserve'), 0),
  };
}

export function flagsHelp(): string {
  return FLAGS.map((f) => `  --${f.flag.padEnd(14)} ${f.help}\n  ${''.padEnd(16)} env ${envName(f.flag)}, default ${f.default || '(none)'}`).join('\n');
}
