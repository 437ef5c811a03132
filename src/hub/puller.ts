/**
 * The server's pulls: one download per repository however many requests ask for it (each gets
 * the progress events), JSON progress in the log. Downloads run on the main thread's event loop
 * with asynchronous I/O only, so generations in the MLX worker and other requests go on meanwhile.
 */
import type { Logger } from 'pino';
import { ServeError } from '../../core/errors.ts';
import { pullModel, type PulledModel, type PullEvent } from './download.ts';
import { hubSettings, isPullable } from './settings.ts';

const LOG_INTERVAL_MS = 2000;

interface RunningPull {
  done: Promise<PulledModel>;
  listeners: Set<(event: PullEvent) => void>;
}

export class ModelPuller {
  private readonly running = new Map<string, RunningPull>();

  constructor(
    private readonly logger: Logger,
    /** Names of the models on disk, for the message when the Hub cannot be reached. */
    private readonly cachedModels: () => Promise<string[]>,
    /** Run when a pull has finished, before its callers hear of it: the registry indexes the new model. */
    private readonly pulled: () => Promise<void>,
  ) {}

  /** Pulls `repo`, or joins the pull of it already running. */
  async pull(repo: string, onEvent?: (event: PullEvent) => void): Promise<PulledModel> {
    const pull = this.running.get(repo) ?? this.start(repo);
    if (onEvent) pull.listeners.add(onEvent);
    try {
      return await pull.done;
    } finally {
      if (onEvent) pull.listeners.delete(onEvent);
    }
  }

  /** For --auto-pull: how to fetch a model a request names that is not on disk, or null when the name is no Hub repository (or the Hub is switched off). */
  fetcher(name: string): (() => Promise<void>) | null {
    const repo = name.replace(/:latest$/, '');
    if (!isPullable(repo, hubSettings())) return null;
    return async () => {
      await this.pull(repo);
    };
  }

  private start(repo: string): RunningPull {
    const settings = hubSettings();
    const listeners = new Set<(event: PullEvent) => void>();
    const started = performance.now();
    let lastLog = 0;
    this.logger.info({ event: 'pull_start', repo, endpoint: settings.endpoint, cacheDir: settings.cacheDir }, 'pulling model');
    const onEvent = (event: PullEvent): void => {
      for (const listener of listeners) listener(event);
      if (event.phase !== 'download' || Date.now() - lastLog < LOG_INTERVAL_MS) return;
      lastLog = Date.now();
      const percent = event.total > 0 ? Math.round((event.completed / event.total) * 1000) / 10 : 100;
      this.logger.info({ event: 'pull_progress', repo, file: event.file, completed: event.completed, total: event.total, percent, seconds: Math.round(performance.now() - started) / 1000 }, 'pulling model');
    };
    const done = pullModel(repo, { settings, onEvent, cachedModels: this.cachedModels }).then(
      async (pulled) => {
        await this.pulled();
        this.logger.info({ event: 'pull_done', repo, commit: pulled.commit, path: pulled.path, totalBytes: pulled.totalBytes, downloadedBytes: pulled.downloadedBytes, seconds: Math.round(performance.now() - started) / 1000 }, 'model pulled');
        return pulled;
      },
      (error: unknown) => {
        const failure = ServeError.from(error);
        this.logger.warn({ event: 'pull_failed', repo, code: failure.code, err: failure.message }, 'pull failed');
        throw failure;
      },
    );
    const pull: RunningPull = { done, listeners };
    this.running.set(repo, pull);
    void done.catch(() => undefined).finally(() => this.running.delete(repo));
    return pull;
  }
}
