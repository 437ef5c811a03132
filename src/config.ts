/** Server settings: every flag has an environment twin MLX_SERVER_<FLAG>; a flag wins over its twin. */
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { WeightsPolicy } from './models/footprint.ts';

/**
 * MLX's Metal cache keeps freed buffers for reuse and by default may grow to the memory limit.
 * mlx-lm bounds it by emptying it after each prefill chunk and every 256 decoded tokens; a limit
 * bounds it the same way without a call in the decode loop, while leaving room for a step's
 * temporaries to be reused rather than allocated again.
 */
const MLX_CACHE_LIMIT_BYTES = 512 * 1024 * 1024;

export interface ServerConfig {
  host: string;
  /** Serves every route: admin, the client APIs, metrics, the dashboard. */
  port: number;
  /** Serves the client APIs only; null: single-port mode. */
  mainPort: number | null;
  /** Set when --host / MLX_SERVER_HOST was given as a URL: says which bind address was read from it. */
  hostNotice: string | null;
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
  /** Tokens per sequence of a GGUF model's llama.cpp context; 0: the model's trained context. */
  ggufContext: number;
  prefillChunk: number;
  promptCacheBytes: number;
  defaultMaxTokens: number;
  weights: WeightsPolicy;
  memoryReserveBytes: number;
  memoryLimitBytes: number;
  mlxCacheLimitBytes: number;
  apiKey: string | null;
  adminKey: string | null;
  insecure: boolean;
  corsOrigins: string[];
  bodyTimeoutSeconds: number;
  maxStreamBufferBytes: number;
  autoPull: boolean;
  /** Nice value of every thread of the server but the main one (Linux); 0 leaves them as started. */
  engineNice: number;
}

export const DEFAULT_PORT = 11437;
export const DEFAULT_MAIN_PORT = 11436;

interface FlagSpec {
  flag: string;
  help: string;
  default: string;
  multiple?: boolean;
  /** A switch: given alone on the command line; its twin is true when set to 1 or true. */
  boolean?: boolean;
  /** Other servers' names for the same setting, read after the twin. */
  envAliases?: string[];
}

/** As llama.cpp's -n and Ollama's num_predict bound an answer: enough for a long reply, and a model that never ends stops in under a minute on a small CPU. */
export const DEFAULT_MAX_TOKENS = 2048;

export const FLAGS: FlagSpec[] = [
  { flag: 'host', help: 'address to bind (a URL is read as its host name)', default: '127.0.0.1' },
  { flag: 'port', help: 'port serving every route: admin, both APIs, /metrics, /dashboard (0 picks a free one)', default: String(DEFAULT_PORT), envAliases: ['MLX_ADMIN_PORT'] },
  { flag: 'main-port', help: `port serving only the client APIs (OpenAI, Ollama, /health, /ready); 'none' for one port. Unset: ${DEFAULT_MAIN_PORT} while --port is at its default, else none`, default: '', envAliases: ['MLX_MAIN_PORT'] },
  { flag: 'model', help: 'default model: a name, a folder path or a .gguf file (built-in tiny-qwen3 when unset)', default: '' },
  { flag: 'models-dir', help: 'folder whose subfolders holding a config.json, and whose *.gguf files, are models (repeatable; env: comma-separated)', default: '', multiple: true },
  { flag: 'idle-timeout', help: 'seconds without requests before the model is unloaded (0 disables)', default: '180' },
  { flag: 'log-level', help: 'pino level: fatal, error, warn, info, debug, trace', default: 'info' },
  { flag: 'log-file', help: 'also write logs to this file', default: '' },
  { flag: 'max-queue', help: 'requests allowed to wait in the engine (for a running place, KV room or a model load) before 503', default: '256' },
  { flag: 'max-body', help: 'largest request body in bytes (413 above)', default: String(10 * 1024 * 1024) },
  { flag: 'max-batch', help: 'requests running in the worker at once, decoded together in one step; more wait in the engine', default: '16' },
  { flag: 'gguf-context', help: "tokens of context per sequence (request) of a GGUF model, allocated by llama.cpp for all --max-batch sequences at load (0: the model's trained context); never above the trained context, shorter when the KV budget is. MLX models' KV grows as needed, up to their trained context", default: '4096' },
  { flag: 'prefill-chunk', help: 'prompt tokens processed per step, so a long prompt does not stall other streams', default: '256' },
  { flag: 'prompt-cache-bytes', help: 'KV state kept for reuse by requests sharing a prefix (0 disables); set aside before the KV budget', default: String(256 * 1024 * 1024) },
  { flag: 'default-max-tokens', help: 'tokens generated at most when a request sets no limit (max_tokens, num_predict); the context length still bounds (0: until the context is full)', default: String(DEFAULT_MAX_TOKENS) },
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
  { flag: 'memory-limit', help: "bytes of memory the server process may use at most, e.g. a container limit (0: what the OS reports; on Apple silicon the GPU's recommended working set); the KV budget is what the model leaves of it", default: '0' },
  { flag: 'mlx-cache-limit', help: "bytes of freed GPU buffers MLX keeps for reuse while serving (Apple silicon; 0 keeps none); an unload empties the cache whatever this says", default: String(MLX_CACHE_LIMIT_BYTES) },
  { flag: 'engine-nice', help: "nice value (0-19) of the engine's threads, every thread of the server but the main one, which streams tokens and answers health: under load, the main thread then preempts them (Linux; 0 leaves them at the server's own)", default: '10' },
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

/**
 * --host is an address to bind; client commands take the server's URL (MLX_SERVER_URL). A URL
 * given here, e.g. an MLX_SERVER_HOST exported for the clients, is read as its host name, and
 * the notice says so.
 */
export function bindAddress(value: string): { address: string; notice: string | null } {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return { address: value, notice: null };
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`--host (${envName('host')}) must be an address to bind, e.g. 127.0.0.1; got '${value}'`);
  }
  const address = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { address, notice: `--host / ${envName('host')} '${value}' is a URL; binding its host ${address} (ports come from --port and --main-port)` };
}

function integer(flag: string, value: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`--${flag} must be an integer >= ${min}${max < Number.MAX_SAFE_INTEGER ? ` and <= ${max}` : ''}, got '${value}'`);
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
  /** The flag, else its twin, else an alias; undefined when none is set (an empty variable is unset). */
  const given = (flag: string): string | undefined => {
    const spec = FLAGS.find((f) => f.flag === flag) as FlagSpec;
    const fromFlag = values[flag];
    if (typeof fromFlag === 'string') return fromFlag;
    return [envName(flag), ...(spec.envAliases ?? [])].map((name) => env[name]).find((v) => v !== undefined && v !== '');
  };
  const get = (flag: string): string => given(flag) ?? (FLAGS.find((f) => f.flag === flag) as FlagSpec).default;
  const list = (flag: string): string[] => {
    const repeated = values[flag];
    return Array.isArray(repeated) && repeated.length > 0 ? repeated.map(String) : get(flag).split(',').filter(Boolean);
  };
  const switchOn = (flag: string): boolean => values[flag] === true || ['1', 'true'].includes((env[envName(flag)] ?? '').toLowerCase());
  const apiKey = get('api-key') || null;
  const insecure = switchOn('insecure');
  const { address: host, notice: hostNotice } = bindAddress(get('host'));
  if (!isLoopback(host) && !apiKey && !insecure) {
    throw new ConfigError(`refusing to bind ${host}${hostNotice ? ` (${hostNotice})` : ''} without --api-key (${envName('api-key')}); pass --insecure to serve the network unauthenticated`);
  }
  const port = integer('port', get('port'), 0);
  const mainPortGiven = given('main-port');
  const mainPort = mainPortGiven === undefined ? (given('port') === undefined ? DEFAULT_MAIN_PORT : null) : mainPortGiven === 'none' ? null : integer('main-port', mainPortGiven, 0);
  if (mainPort !== null && mainPort !== 0 && mainPort === port) throw new ConfigError(`--main-port and --port are both ${port}; give --main-port another port, or 'none' to serve everything on --port`);
  return {
    host,
    hostNotice,
    port,
    mainPort,
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
    ggufContext: integer('gguf-context', get('gguf-context'), 0),
    prefillChunk: integer('prefill-chunk', get('prefill-chunk'), 1),
    promptCacheBytes: integer('prompt-cache-bytes', get('prompt-cache-bytes'), 0),
    defaultMaxTokens: integer('default-max-tokens', get('default-max-tokens'), 0),
    weights: oneOf('weights', get('weights'), ['auto', 'native', 'fp32'] as const),
    shutdownTimeoutSeconds: integer('shutdown-timeout', get('shutdown-timeout'), 0),
    memoryReserveBytes: integer('memory-reserve', get('memory-reserve'), 0),
    memoryLimitBytes: integer('memory-limit', get('memory-limit'), 0),
    mlxCacheLimitBytes: integer('mlx-cache-limit', get('mlx-cache-limit'), 0),
    apiKey,
    adminKey: get('admin-key') || null,
    insecure,
    corsOrigins: list('cors-origin'),
    bodyTimeoutSeconds: integer('body-timeout', get('body-timeout'), 1),
    maxStreamBufferBytes: integer('max-stream-buffer', get('max-stream-buffer'), 1024),
    autoPull: switchOn('auto-pull'),
    engineNice: integer('engine-nice', get('engine-nice'), 0, 19),
  };
}

export function flagsHelp(): string {
  return FLAGS.map((f) => `  --${f.flag.padEnd(14)} ${f.help}\n  ${''.padEnd(16)} env ${[envName(f.flag), ...(f.envAliases ?? [])].join(' or ')}, default ${f.default || '(none)'}`).join('\n');
}
