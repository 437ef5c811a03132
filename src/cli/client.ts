/**
 * Client commands (`run`, `ps`, `list`, `stop`, `show`): they talk to a running server over its
 * Ollama-compatible API, like any other client, and never load a model in this process.
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { DEFAULT_MAX_TOKENS } from '../config.ts';
import { BUILTIN_MODEL } from '../models/registry.ts';
import { ApiClient, ClientError, DEFAULT_HOST, generationEvent, HOST_ENV, serverLocation, URL_ENV } from '../client/api-client.ts';

/** A command the user gave that cannot be carried out, said in words they can act on. */
export class CommandError extends Error {}

/** Whether `error` is one of the messages a client command prints for the user. */
export const isUserMessage = (error: unknown): error is Error => error instanceof ClientError || error instanceof CommandError;

type Json = Record<string, unknown>;

const GB = 1e9;
function size(bytes: number): string {
  if (bytes >= GB) return `${(bytes / GB).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${Math.round(bytes / 1e6)} MB`;
  return `${Math.round(bytes / 1e3)} KB`;
}

function ago(iso: string, now = Date.now()): string {
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  const [amount, unit] = seconds < 60 ? [seconds, 'second'] : seconds < 3600 ? [Math.round(seconds / 60), 'minute'] : seconds < 86400 ? [Math.round(seconds / 3600), 'hour'] : [Math.round(seconds / 86400), 'day'];
  return amount <= 0 ? 'just now' : `${amount} ${unit}${amount === 1 ? '' : 's'} ago`;
}

function until(iso: string, now = Date.now()): string {
  const seconds = Math.round((Date.parse(iso) - now) / 1000);
  if (seconds > 100 * 365 * 86400) return 'Forever';
  if (seconds <= 0) return 'Stopping...';
  if (seconds < 60) return `${seconds} seconds from now`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} minutes from now`;
  return `${Math.round(seconds / 3600)} hours from now`;
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd((widths[i] ?? 0) + 4))).join('').trimEnd()).join('\n') + '\n';
}

interface RunOptions {
  keepAlive: string | undefined;
  verbose: boolean;
  options: Json;
}

const keepAliveField = (run: RunOptions): Json => (run.keepAlive !== undefined ? { keep_alive: run.keepAlive } : {});

/** Streams one answer to stdout; returns the whole text so a chat can keep it. */
async function answer(client: ApiClient, model: string, messages: Json[], run: RunOptions, signal?: AbortSignal): Promise<string> {
  const parts: string[] = [];
  for await (const object of client.stream('/api/chat', { model, messages, options: run.options, ...keepAliveField(run) }, signal)) {
    const { text } = generationEvent(object);
    if (text) {
      process.stdout.write(text);
      parts.push(text);
    }
    if (object.done && run.verbose) {
      const seconds = (key: string): number => ((object[key] as number) ?? 0) / 1e9;
      const rate = (count: string, duration: string): string => (seconds(duration) > 0 ? ((object[count] as number) / seconds(duration)).toFixed(2) : '-');
      process.stderr.write(
        `\ntotal duration:       ${seconds('total_duration').toFixed(3)}s\nload duration:        ${seconds('load_duration').toFixed(3)}s\n` +
          `prompt eval count:    ${object.prompt_eval_count} token(s)\nprompt eval rate:     ${rate('prompt_eval_count', 'prompt_eval_duration')} tokens/s\n` +
          `eval count:           ${object.eval_count} token(s)\neval rate:            ${rate('eval_count', 'eval_duration')} tokens/s\n`,
      );
    }
  }
  process.stdout.write('\n');
  return parts.join('');
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').trim();
}

async function interactive(client: ApiClient, model: string, run: RunOptions): Promise<void> {
  const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: '>>> ' });
  const history: Json[] = [];
  let generation: AbortController | null = null;
  rl.on('SIGINT', () => {
    if (generation) generation.abort();
    else {
      process.stdout.write('\nUse Ctrl + d or /bye to exit.\n');
      rl.prompt();
    }
  });
  process.stdout.write('Send a message (/? for help)\n');
  rl.prompt();
  for await (const line of rl) {
    const input = line.trim();
    if (input === '/bye') break;
    if (input === '/?' || input === '/help') process.stdout.write('  /clear   forget the conversation\n  /bye     exit\n  Ctrl+C   stop the answer being written\n');
    else if (input === '/clear') {
      history.length = 0;
      process.stdout.write('Cleared the conversation.\n');
    } else if (input) {
      history.push({ role: 'user', content: input });
      generation = new AbortController();
      try {
        history.push({ role: 'assistant', content: await answer(client, model, history, run, generation.signal) });
      } catch (error) {
        history.pop();
        if ((error as Error).name !== 'AbortError') throw error;
        process.stdout.write('\n');
      } finally {
        generation = null;
      }
    }
    rl.prompt();
  }
  rl.close();
}

function number(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new CommandError(`--${flag} must be a number, got '${value}'`);
  return n;
}

export const CLIENT_USAGE = `  mlx-server run MODEL [PROMPT]  answer PROMPT (or what is piped in); a chat when stdin is a terminal
      --num-predict N  --temperature T  --seed N  --keepalive DURATION  --verbose
      an answer stops at N tokens, else at the server's --default-max-tokens (${DEFAULT_MAX_TOKENS})
      the built-in ${BUILTIN_MODEL} has random weights: it writes meaningless text until that limit
      (try --num-predict 32); serve a real model to get real answers
  mlx-server ps                  the loaded model, its weights' size in memory and when it will be unloaded
  mlx-server list                the models the server can load and their size on disk
  mlx-server show MODEL          a model's architecture, parameters and capabilities
  mlx-server stop MODEL          unload MODEL now

  sizes are decimal, as Ollama prints them: 1 MB = 10^6 bytes
  client commands take --host URL (env ${URL_ENV}, else ${HOST_ENV}; default ${DEFAULT_HOST})`;

export const CLIENT_COMMANDS = ['run', 'ps', 'list', 'ls', 'show', 'stop'];

interface CommandFlags {
  'num-predict'?: string | undefined;
  temperature?: string | undefined;
  seed?: string | undefined;
  keepalive?: string | undefined;
  verbose?: boolean | undefined;
}

/** Runs one client command; throws a ClientError or CommandError with a message for the user. */
export async function runClientCommand(command: string, argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      host: { type: 'string' },
      'num-predict': { type: 'string' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      keepalive: { type: 'string' },
      verbose: { type: 'boolean' },
    },
  });
  const location = serverLocation(values.host);
  try {
    await runCommand(command, new ApiClient(location.url), values, positionals);
  } catch (error) {
    if (!(error instanceof ClientError) || error.code !== 'unreachable') throw error;
    throw new CommandError(
      `no mlx-server is running at ${location.url} (from ${location.source}; ${error.reason}); start one with 'mlx-server serve', or point --host / ${URL_ENV} at one`,
    );
  }
}

async function runCommand(command: string, client: ApiClient, values: CommandFlags, positionals: string[]): Promise<void> {
  const [model, ...rest] = positionals;
  const needModel = (): string => {
    if (!model) throw new CommandError(`'${command}' needs a model name (see 'mlx-server list')`);
    return model;
  };
  switch (command) {
    case 'list':
    case 'ls': {
      const { models } = await client.get<{ models: Json[] }>('/api/tags');
      const rows = models.map((m) => [m.name as string, (m.digest as string).slice(0, 12), size(m.size as number), ago(m.modified_at as string)]);
      process.stdout.write(table([['NAME', 'ID', 'SIZE', 'MODIFIED'], ...rows]));
      return;
    }
    case 'ps': {
      const { models } = await client.get<{ models: Json[] }>('/api/ps');
      const processor = (m: Json): string => ((m.size_vram as number) > 0 ? '100% GPU' : '100% CPU');
      const rows = models.map((m) => [m.name as string, size(m.size as number), processor(m), String(m.context_length ?? ''), until(m.expires_at as string)]);
      process.stdout.write(table([['NAME', 'SIZE', 'PROCESSOR', 'CONTEXT', 'UNTIL'], ...rows]));
      return;
    }
    case 'stop': {
      const name = needModel();
      const { models } = await client.get<{ models: Json[] }>('/api/ps');
      if (!models.some((m) => m.name === name || m.name === name.replace(/:latest$/, ''))) throw new CommandError(`model '${name}' is not loaded, so there is nothing to stop`);
      await client.post('/api/generate', { model: name, keep_alive: 0, stream: false });
      return;
    }
    case 'show': {
      const shown = await client.post('/api/show', { model: needModel() });
      const info = shown.model_info as Json;
      const details = shown.details as Json;
      const arch = info['general.architecture'] as string;
      const field = (key: string): string => String(info[`${arch}.${key}`] ?? '-');
      const lines = [
        '  Model',
        `    architecture        ${arch}`,
        `    parameters          ${(details.parameter_size as string) || '-'}`,
        `    context length      ${field('context_length')}`,
        `    embedding length    ${field('embedding_length')}`,
        `    layers              ${field('block_count')}`,
        `    quantization        ${details.quantization_level as string}`,
        '',
        '  Capabilities',
        ...(shown.capabilities as string[]).map((c) => `    ${c}`),
      ];
      if (shown.parameters) lines.push('', '  Parameters', ...(shown.parameters as string).split('\n').map((p) => `    ${p}`));
      process.stdout.write(`${lines.join('\n')}\n\n`);
      return;
    }
    case 'run': {
      const name = needModel();
      const options: Json = {};
      const numPredict = number('num-predict', values['num-predict']);
      const temperature = number('temperature', values.temperature);
      const seed = number('seed', values.seed);
      if (numPredict !== undefined) options.num_predict = numPredict;
      if (temperature !== undefined) options.temperature = temperature;
      if (seed !== undefined) options.seed = seed;
      const run: RunOptions = { keepAlive: values.keepalive, verbose: values.verbose ?? false, options };
      let prompt = rest.join(' ');
      if (!prompt && !process.stdin.isTTY) prompt = await readStdin();
      if (prompt) await answer(client, name, [{ role: 'user', content: prompt }], run);
      else if (process.stdin.isTTY) {
        await client.post('/api/generate', { model: name, stream: false, ...keepAliveField(run) });
        await interactive(client, name, run);
      } else throw new CommandError('nothing to answer: the piped input was empty');
      return;
    }
    default:
      throw new CommandError(`unknown command '${command}'`);
  }
}
