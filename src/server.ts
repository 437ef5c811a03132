/** The server process: telemetry, registry, engine and routes, on one uWebSockets.js port. */
import type { Logger } from 'pino';
import { adminRoutes, sampleMemory } from './api/admin.ts';
import { dashboardRoutes } from './api/dashboard.ts';
import { metricsRoutes } from './api/metrics.ts';
import type { ServeContext } from './api/context.ts';
import { ollamaRoutes } from './api/ollama.ts';
import { pullRoutes } from './api/pull.ts';
import { openAiRoutes } from './api/openai.ts';
import type { ServerConfig } from './config.ts';
import { Engine } from './engine/engine.ts';
import { startHttpServer } from './http/server.ts';
import { ModelPuller } from './hub/puller.ts';
import { ModelRegistry } from './models/registry.ts';
import { LatencyRecorder } from './telemetry/latency.ts';
import { createTelemetryBuffers, Telemetry } from './telemetry/layout.ts';

export interface RunningServer {
  readonly port: number;
  readonly context: ServeContext;
  close(): Promise<void>;
}

export async function startServer(config: ServerConfig, logger: Logger): Promise<RunningServer> {
  const telemetry = new Telemetry(createTelemetryBuffers());
  const puller = new ModelPuller(logger, (): string[] => registry.list().map((m) => m.name));
  const registry: ModelRegistry = new ModelRegistry({ model: config.model, modelsDirs: config.modelsDirs, cacheDir: config.cacheDir, ...(config.autoPull ? { fetchMissing: (name: string) => puller.fetcher(name) } : {}) });
  const engine = new Engine({
    registry,
    telemetry,
    logger,
    idleTimeoutSeconds: config.idleTimeoutSeconds,
    maxQueue: config.maxQueue,
    requestTimeoutSeconds: config.requestTimeoutSeconds,
    maxBatch: config.maxBatch,
    weights: config.weights,
    memory: { reserveBytes: config.memoryReserveBytes, limitBytes: config.memoryLimitBytes, promptCacheBytes: config.promptCacheBytes, prefillChunk: config.prefillChunk },
  });
  await engine.start();
  sampleMemory(telemetry);
  const context: ServeContext = { config, engine, registry, telemetry, latency: new LatencyRecorder(), logger };
  const http = await startHttpServer([...adminRoutes(context), ...openAiRoutes(context), ...ollamaRoutes(context), ...pullRoutes(context, puller), ...metricsRoutes(context), ...dashboardRoutes(context)], { ...config, logger });
  const sampler = setInterval(() => sampleMemory(telemetry), 1000);
  sampler.unref();
  logger.info({ event: 'listening', host: config.host, port: http.port, defaultModel: registry.defaultName, idleTimeoutSeconds: config.idleTimeoutSeconds }, 'listening');
  return {
    port: http.port,
    context,
    close: async () => {
      clearInterval(sampler);
      http.close();
      await engine.close(config.shutdownTimeoutSeconds * 1000);
    },
  };
}
