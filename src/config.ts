/** Server settings: every flag has an environment twin MLX_SERVER_<FLAG>; a flag wins over its twin. */
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { WeightsPolicy } from './models/footprint.ts';

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
  maxBatch: number;
  prefillChunk: number;
  promptCacheBytes: number;
  weights: WeightsPolicy;
  memoryReserveBytes: number;
  memoryLimitBytes: number;
  apiKey: string | null;
  adminKey: string | null;
  insecure: boolean;
  corsOrigins: string[];
  bodyTimeoutSeconds: number;
  maxStreamBufferBytes: number;
  autoPull: boolean;
}

interface FlagSpec {
  flag: string;
  help: string;
  default: string;
  multiple?: boolean;
  /** A switch: given alone on the command line; its twin is true when set to 1 or true. */
  boolean?: boolean;
}

export const FLAGS: FlagSpec[] = [
  { flag: 'host', help: 'address to bind', default: '127.0.0.1' },
  { flag: 'port', help: 'port to listen on (0 picks a free one)', default: '11437' },
  { flag: 'model', help: 'default model: a name or a folder path (built-in tiny-qwen3 when unset)', default: '' },
  { flag: 'models-dir', help: 'folder whose subfolders holding a config.json are models (repeatable; env: comma-separated)', default: '', multiple: true },
  { flag: 'idle-timeout', help: 'seconds without requests before the model is unloaded (0 disables)', default: '180' },
  { flag: 'log-level', help: 'pino level: fatal, error, warn, info, debug, trace', default: 'info' },
  { flag: 'log-file', help: 'also write logs to this file', default: '' },
  { flag: 'max-queue', help: 'requests allowed to wait in the engine (for a running place, KV room or a model load) before 503', default: '256' },
  { flag: 'max-body', help: 'largest request body in bytes (413 above)', default: String(10 * 1024 * 1024) },
  { flag: 'max-batch', help: 'requests running in the worker at once, decoded together in one step; more wait in the engine', default: '16' },
  { flag: 'prefill-chunk', help: 'prompt tokens processed per step, so a long prompt does not stall other streams', default: '256' },
  { flag: 'prompt-cache-bytes', help: 'KV state kept for reuse by requests sharing a prefix (0 disables); set aside before the KV budget', default: String(256 * 1024 * 1024) },
  { flag: 'weights', help: 'how quantized weights are held: auto (fp32 on a CPU when it fits), native, fp32', default: 'auto' },
  { flag: 'request-timeout', help: 'seconds a request may take in all before it is cancelled (0: no limit)', default: '600' },
  { flag: 'shutdown-timeout', help: 'seconds SIGTERM waits for running generations before cancelling them', default: '30' },
  { flag: 'memory-reserve', help: 'bytes of available memory a model load must leave free; not part of the KV budget', default: String(512 * 1024 * 1024) },
  { flag: 'api-key', help: 'require Authorization: Bearer KEY on every route but /admin/health (prefer the env twin: argv is visible to other users)', default: '' },
  { flag: 'admin-key', help: 'require Authorization: Bearer KEY on admin mutations (/admin/load, /admin/unload); --api-key guards them when unset', default: '' },
  { flag: 'insecure', help: 'allow binding a non-loopback address without --api-key', default: '', boolean: true },
  { flag: 'cors-origin', help: "answer browsers from this origin ('*' for any; repeatable; env: comma-separated); CORS is off when unset", default: '', multiple: true },
  { flag: 'body-timeout', help: 'seconds a request body may take to arrive before the connection is dropped with 408', default: '60' },
  { flag: 'max-stream-buffer', help: 'bytes of a streamed answer held for a client that does not read before it is dropped', default: String(1024 * 1024) },
  { flag: 'auto-pull', help: 'download a model that a request names from the Hugging Face Hub when it is not cached (HF_ENDPOINT, HF_TOKEN apply)', default: '', boolean: true },
  { flag: 'memory-limit', help: 'bytes of memory the server process may use at most, e.g. a container limit (0: what the OS reports); the KV budget is what the model leaves of it', default: '0' },
  { flag: 'cache-dir', help: 'where the built-in model is written', default: join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'mlx-inference-server') },
];

export const envName = (flag: string): string => `MLX_SERVER_${flag.toUpperCase().replaceAll('-', '_')}`;

export class ConfigError extends Error {}

/** Loopback names and addresses: binding anything else exposes the server to the network. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost' || bare === '::1') return true;
  const v4 = bare.replace(/^::ffff:/, '');
  return isIP(v4) === 4 && v4.startsWith('127.');
}

function integer(flag: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`--${flag} must be an integer >= ${min}, got '${value}'`);
  return n;
}

function oneOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new ConfigError(`--${flag} must be one of ${allowed.join(', ')}, got '${value}'`);
  return value as T;
}

export function parseServerConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const { values } = parseArgs({
    args: argv,
    options: Object.fromEntries(FLAGS.map((f) => [f.flag, { type: f.boolean ? 'boolean' : 'string', multiple: f.multiple ?? false }])),
    strict: true,
    allowPositionals: false,
  });
  const value = (spec: FlagSpec): string => {
    const given = values[spec.flag];
    if (typeof given === 'string') return given;
    return env[envName(spec.flag)] ?? spec.default;
  };
  const get = (flag: string): string => value(FLAGS.find((f) => f.flag === flag) as FlagSpec);
  const list = (flag: string): string[] => {
    const given = values[flag];
    return Array.isArray(given) && given.length > 0 ? given.map(String) : get(flag).split(',').filter(Boolean);
  };
  const switchOn = (flag: string): boolean => values[flag] === true || ['1', 'true'].includes((env[envName(flag)] ?? '').toLowerCase());
  const apiKey = get('api-key') || null;
  const insecure = switchOn('insecure');
  const host = get('host');
  if (!isLoopback(host) && !apiKey && !insecure) {
    throw new ConfigError(`refusing to bind ${host} without --api-key (${envName('api-key')}); pass --insecure to serve the network unauthenticated`);
  }
  return {
    host,
    port: integer('port', get('port'), 0),
    model: get('model') || null,
    modelsDirs: list('models-dir'),
    idleTimeoutSeconds: integer('idle-timeout', get('idle-timeout'), 0),
    logLevel: get('log-level'),
    logFile: get('log-file') || null,
    maxQueue: integer('max-queue', get('max-queue'), 0),
    maxBodyBytes: integer('max-body', get('max-body'), 1),
    cacheDir: get('cache-dir'),
    requestTimeoutSeconds: integer('request-timeout', get('request-timeout'), 0),
    maxBatch: integer('max-batch', get('max-batch'), 1),
    prefillChunk: integer('prefill-chunk', get('prefill-chunk'), 1),
    promptCacheBytes: integer('prompt-cache-bytes', get('prompt-cache-bytes'), 0),
    weights: oneOf('weights', get('weights'), ['auto', 'native', 'fp32'] as const),
    shutdownTimeoutSeconds: integer('shutdown-timeout', get('shutdown-timeout'), 0),
    memoryReserveBytes: integer('memory-reserve', get('memory-reserve'), 0),
    memoryLimitBytes: integer('memory-limit', get('memory-limit'), 0),
    apiKey,
    adminKey: get('admin-key') || null,
    insecure,
    corsOrigins: list('cors-origin'),
    bodyTimeoutSeconds: integer('body-timeout', get('body-timeout'), 1),
    maxStreamBufferBytes: integer('max-stream-buffer', get('max-stream-buffer'), 1024),
    autoPull: switchOn('auto-pull'),
  };
}

export function flagsHelp(): string {
  return FLAGS.map((f) => `  --${f.flag.padEnd(14)} ${f.help}\n  ${''.padEnd(16)} env ${envName(f.flag)}, default ${f.default || '(none)'}`).join('\n');
}
