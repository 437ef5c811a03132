/**
 * `mlx-server pull MODEL`: downloads a model from the Hugging Face Hub straight into the Hugging
 * Face cache, with no server running; a running server sees it at its next request. Progress goes
 * to stderr: a bar on a terminal, a line per file otherwise.
 */
import { parseArgs } from 'node:util';
import { ServeError } from '../../core/errors.ts';
import { pullModel, type PulledModel, type PullEvent } from '../hub/download.ts';
import { hubSettings, parseRepoId } from '../hub/settings.ts';
import { BUILTIN_MODEL, huggingFaceModels } from '../models/registry.ts';

const USAGE = `usage: mlx-server pull ORG/NAME

Downloads a model (config, tokenizer, safetensors weights) from the Hugging Face Hub into the
Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), where the
server finds it by that name. An interrupted pull resumes where it stopped.
Environment: HF_ENDPOINT (another Hub), HF_TOKEN (private and gated models), HF_HUB_OFFLINE.
`;

const RATE_WINDOW_MS = 5000;
const BAR_WIDTH = 20;

export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** Draws pull events: bytes, rate over the last few seconds, and time left, for the whole model. */
export class PullProgress {
  private readonly samples: { at: number; completed: number }[] = [];
  private readonly filesDone = new Set<string>();

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  readonly onEvent = (event: PullEvent): void => {
    if (event.phase === 'manifest') this.line(`pulling ${event.repo}`);
    else if (event.phase === 'download') this.download(event);
    else if (event.phase === 'done') {
      this.clear();
      this.line(`pulled ${event.repo}: ${formatBytes(event.total)}, ${formatBytes(event.downloaded)} of it downloaded now`);
    }
  };

  private download(event: Extract<PullEvent, { phase: 'download' }>): void {
    const now = Date.now();
    this.samples.push({ at: now, completed: event.completed });
    while (this.samples.length > 2 && now - (this.samples[0] as { at: number }).at > RATE_WINDOW_MS) this.samples.shift();
    const first = this.samples[0] as { at: number; completed: number };
    const rate = now > first.at ? ((event.completed - first.completed) * 1000) / (now - first.at) : 0;
    const fraction = event.total > 0 ? event.completed / event.total : 1;
    const finishedFile = event.fileCompleted === event.fileTotal && !this.filesDone.has(event.file);
    if (finishedFile) this.filesDone.add(event.file);
    if (!this.out.isTTY) {
      if (finishedFile) this.line(`  ${event.file}  ${formatBytes(event.fileTotal)}  (${formatBytes(event.completed)} of ${formatBytes(event.total)})`);
      return;
    }
    const filled = Math.round(fraction * BAR_WIDTH);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}`;
    const eta = rate > 0 ? (event.total - event.completed) / rate : Number.POSITIVE_INFINITY;
    const text = `${event.file.padEnd(22).slice(0, 22)} ${bar} ${String(Math.floor(fraction * 100)).padStart(3)}%  ${formatBytes(event.completed)}/${formatBytes(event.total)}  ${formatBytes(rate)}/s  ETA ${formatDuration(eta)}`;
    this.out.write(`\r${text.slice(0, (this.out.columns || 80) - 1)}\x1b[K`);
  }

  private clear(): void {
    if (this.out.isTTY) this.out.write('\r\x1b[K');
  }

  private line(text: string): void {
    this.clear();
    this.out.write(`${text}\n`);
  }
}

/** Pulls `model` into the cache with a progress display; for `pull`, and for any command that needs a model first. */
export function pullWithProgress(model: string, out: NodeJS.WriteStream = process.stderr): Promise<PulledModel> {
  const settings = hubSettings();
  return pullModel(parseRepoId(model), {
    settings,
    onEvent: new PullProgress(out).onEvent,
    // What a server started here would serve by default, so this answer and the server's agree.
    cachedModels: async () => [...(await huggingFaceModels(settings.cacheDir)).map((m) => m.name), BUILTIN_MODEL],
  });
}

export async function pullCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (positionals.length !== 1) {
    process.stderr.write(`mlx-server pull: name one model\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  try {
    const pulled = await pullWithProgress(positionals[0] as string);
    process.stdout.write(`${pulled.path}\n`);
  } catch (error) {
    process.stderr.write(`\nmlx-server pull: ${error instanceof ServeError ? error.message : String(error)}\n`);
    process.exitCode = 1;
  }
}
