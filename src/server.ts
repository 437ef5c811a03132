/**
 * The server process: telemetry, registry, engine and routes. The admin port (--port) serves
 * every route; the main port (--main-port), when there is one, serves the client APIs and the
 * probes, so fleets can point clients at one port and operators at the other.
 */
import type { Logger } from 'pino';
import { adminRoutes, probeRoutes } from './api/admin.ts';
import { dashboardRoutes } from './api/dashboard.ts';
import { openAiError } from './api/errors.ts';
import { metricsRoutes } from './api/metrics.ts';
import type { ListeningPorts, ServeContext } from './api/context.ts';
import { ollamaRoutes } from './api/ollama.ts';
import { pullRoutes } from './api/pull.ts';
import { openAiRoutes } from './api/openai.ts';
import type { ServerConfig } from './config.ts';
import { Engine } from './engine/engine.ts';
import { startHttpServer, type HttpServer } from './http/server.ts';
import { ModelPuller } from './hub/puller.ts';
import { ModelRegistry } from './models/registry.ts';
import { LatencyRecorder } from './telemetry/latency.ts';
import { sampleMemory } from './telemetry/memory.ts';
import { createTelemetryBuffers, Telemetry } from '../core/telemetry.ts';

export interface RunningServer {
  readonly ports: ListeningPorts;
  readonly context: ServeContext;
  close(): Promise<void>;
}

export async function startServer(config: ServerConfig, logger: Logger): Promise<RunningServer> {
  const telemetry = new Telemetry(createTelemetryBuffers());
  const puller = new ModelPuller(
    logger,
    async () => registry.list().map((m) => m.name),
    () => registry.refresh(),
  );
  const registry: ModelRegistry = await ModelRegistry.open({ model: config.model, modelsDirs: config.modelsDirs, cacheDir: config.cacheDir, ...(config.autoPull ? { fetchMissing: (name: string) => puller.fetcher(name) } : {}) });
  const engine = new Engine({
    registry,
    telemetry,
    logger,
    idleTimeoutSeconds: config.idleTimeoutSeconds,
    maxQueue: config.maxQueue,
    requestTimeoutSeconds: config.requestTimeoutSeconds,
    maxBatch: config.maxBatch,
    ggufContext: config.ggufContext,
    defaultMaxTokens: config.defaultMaxTokens,
    weights: config.weights,
    memory: { reserveBytes: config.memoryReserveBytes, limitBytes: config.memoryLimitBytes, promptCacheBytes: config.promptCacheBytes, prefillChunk: config.prefillChunk },
    mlxCacheLimitBytes: config.mlxCacheLimitBytes,
    engineNice: config.engineNice,
  });
  await engine.start();
  sampleMemory(telemetry);
  const ports: ListeningPorts = { admin: config.port, main: config.mainPort };
  const context: ServeContext = { config, ports, engine, registry, telemetry, latency: new LatencyRecorder(), logger };
  const clientRoutes = [...probeRoutes(context), ...openAiRoutes(context), ...ollamaRoutes(context), ...pullRoutes(context, puller)];
  const listeners: HttpServer[] = [];
  const closeListeners = (): void => {
    for (const listener of listeners.splice(0)) listener.close();
  };
  // A path no route serves answers in OpenAI's shape: the one most clients of either family parse
  // (Ollama's own server answers such paths with plain text, which no client reads as an error).
  const unknownPathErrors = openAiError;
  try {
    const admin = await startHttpServer([...adminRoutes(context), ...metricsRoutes(context), ...dashboardRoutes(context), ...clientRoutes], { ...config, port: config.port, logger, unknownPathErrors });
    listeners.push(admin);
    ports.admin = admin.port;
    if (config.mainPort !== null) {
      const main = await startHttpServer(clientRoutes, { ...config, port: config.mainPort, logger, unknownPathErrors });
      listeners.push(main);
      ports.main = main.port;
    }
  } catch (error) {
    closeListeners();
    registry.close();
    await engine.close();
    throw error;
  }
  const sampler = setInterval(() => sampleMemory(telemetry), 1000);
  sampler.unref();
  logger.info({ event: 'listening', host: config.host, port: ports.admin, mainPort: ports.main, defaultModel: registry.defaultName, idleTimeoutSeconds: config.idleTimeoutSeconds }, 'listening');
  return {
    ports,
    context,
    close: async () => {
      clearInterval(sampler);
      closeListeners();
      registry.close();
      await engine.close(config.shutdownTimeoutSeconds * 1000);
    },
  };
}
