import type { Logger } from 'pino';
import type { ServerConfig } from '../config.ts';
import type { Engine, EngineEvent } from '../engine/engine.ts';
import type { GenerationRequest, GenerationStats } from '../../core/protocol.ts';
import type { Exchange } from '../http/exchange.ts';
import type { ModelEntry, ModelRegistry } from '../models/registry.ts';
import type { LatencyRecorder } from '../telemetry/latency.ts';
import type { Telemetry } from '../../core/telemetry.ts';

/** The ports this server listens on (known once it listens); main is null in single-port mode. */
export interface ListeningPorts {
  admin: number;
  main: number | null;
}

/** What every route family is built from. */
export interface ServeContext {
  config: ServerConfig;
  ports: ListeningPorts;
  engine: Engine;
  registry: ModelRegistry;
  telemetry: Telemetry;
  latency: LatencyRecorder;
  logger: Logger;
}

/** Runs one generation for an exchange; a client that goes away cancels it. */
export async function runGeneration(
  ctx: ServeContext,
  exchange: Exchange,
  request: GenerationRequest,
  model: ModelEntry,
  onEvent: (event: EngineEvent) => void,
): Promise<GenerationStats> {
  const timing = ctx.latency.track();
  const handle = ctx.engine.generate(request, model, (event) => {
    timing.event(event);
    onEvent(event);
  });
  exchange.onAbort(() => handle.cancel());
  const stats = await handle.done;
  timing.finished(stats);
  return stats;
}

/** Runs a generation to the end and returns its whole text. */
export async function generateText(ctx: ServeContext, exchange: Exchange, request: GenerationRequest, model: ModelEntry): Promise<{ text: string; stats: GenerationStats }> {
  const parts: string[] = [];
  const stats = await runGeneration(ctx, exchange, request, model, (event) => {
    if (event.type === 'text') parts.push(event.text);
  });
  return { text: parts.join(''), stats };
}
