/**
 * The uWebSockets.js app: routing, 404/405, API keys, CORS, JSON bodies, per-request ids and
 * logs, typed errors. uWS itself drops a connection whose request headers are not complete
 * 10 s after it opened, and a body that arrives slower than 16 KB/s over 10 s; neither is
 * configurable from JavaScript.
 */
import { createServer } from 'node:net';
import uWS from 'uWebSockets.js';
import type { Logger } from 'pino';
import type { ServerConfig } from '../config.ts';
import { ServeError } from '../../core/errors.ts';
import { Authenticator, routeAccess } from './auth.ts';
import { CorsPolicy } from './cors.ts';
import { Exchange } from './exchange.ts';
import { httpStatus } from './status.ts';

export type Method = 'GET' | 'POST' | 'HEAD' | 'DELETE';
export type ErrorWriter = (exchange: Exchange, error: ServeError) => void;

export interface Route {
  method: Method;
  path: string;
  handler: (exchange: Exchange) => Promise<void> | void;
  errors: ErrorWriter;
  /** Polled routes (health, status) log at debug so polling does not flood the log. */
  quiet?: boolean;
}

export type HttpOptions = Pick<ServerConfig, 'host' | 'apiKey' | 'adminKey' | 'corsOrigins' | 'bodyTimeoutSeconds' | 'maxStreamBufferBytes'> & {
  port: number;
  logger: Logger;
  /** The error shape of a path no route serves: the caller's choice, as no API family owns it. */
  unknownPathErrors: ErrorWriter;
};

export interface HttpServer {
  readonly port: number;
  close(): void;
}

declare module 'uWebSockets.js' {
  interface TemplatedApp {
    /** Present in uWS, missing from its typings: `options` 1 is LIBUS_LISTEN_EXCLUSIVE_PORT. */
    listen(host: RecognizedString, port: number, options: number, cb: (listenSocket: us_listen_socket | false) => void | Promise<void>): TemplatedApp;
  }
}

/** Without it uWS sets SO_REUSEPORT, and a second server on a busy port would quietly share its traffic. */
const LISTEN_EXCLUSIVE_PORT = 1;

/** A port the server cannot listen on; the message is the one line the command line prints. */
export class ListenError extends Error {
  constructor(readonly port: number, message: string) {
    super(message);
    this.name = 'ListenError';
  }
}

/** uWS says only that listening failed; binding the same address with Node gives the reason. */
function listenFailure(host: string, port: number): Promise<ListenError> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', (error: NodeJS.ErrnoException) => {
      const reason: Record<string, string> = {
        EADDRINUSE: `port ${port} is in use`,
        EACCES: `port ${port} needs privileges this user does not have (ports below 1024)`,
        EADDRNOTAVAIL: `address ${host} is not one of this machine's (cannot listen on port ${port})`,
      };
      resolve(new ListenError(port, reason[error.code ?? ''] ?? `cannot listen on ${host}:${port} (${error.code ?? error.message})`));
    });
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve(new ListenError(port, `cannot listen on ${host}:${port}`))));
  });
}

export function parseJsonObject(body: Buffer): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (error) {
    throw new ServeError('invalid_json', `request body is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ServeError('invalid_json', 'request body must be a JSON object');
  }
  return parsed as Record<string, unknown>;
}

let requestCounter = 0;
const nextRequestId = (): string => `req-${Date.now().toString(36)}-${(requestCounter++).toString(36)}`;

export function startHttpServer(routes: Route[], options: HttpOptions): Promise<HttpServer> {
  const { logger } = options;
  const app = uWS.App();
  const authenticator = new Authenticator(options);
  const cors = new CorsPolicy(options.corsOrigins);

  const serve = (route: Route) => (res: uWS.HttpResponse, req: uWS.HttpRequest) => {
    const exchange = new Exchange(res, req, {
      requestId: req.getHeader('x-request-id') || nextRequestId(),
      bodyTimeoutMs: options.bodyTimeoutSeconds * 1000,
      maxStreamBufferBytes: options.maxStreamBufferBytes,
      responseHeaders: cors.responseHeaders(req.getHeader('origin') || undefined),
    });
    const started = performance.now();
    const finish = (): void => {
      const entry = {
        reqId: exchange.requestId,
        method: exchange.method,
        path: exchange.path,
        status: exchange.status,
        ms: Math.round((performance.now() - started) * 100) / 100,
        aborted: exchange.aborted,
        ...(exchange.dropped ? { dropped: exchange.dropped } : {}),
      };
      if (route.quiet) logger.debug(entry, 'request');
      else logger.info(entry, 'request');
    };
    const fail = (error: unknown): void => {
      const serveError = ServeError.from(error);
      if (httpStatus(serveError) >= 500) logger.error({ reqId: exchange.requestId, err: serveError }, 'request failed');
      if (!exchange.hasResponded && !exchange.isStreaming) route.errors(exchange, serveError);
      else if (exchange.isStreaming) exchange.end();
    };
    try {
      authenticator.check(routeAccess(exchange.method, route.path), exchange.headers.get('authorization'));
      const pending = route.handler(exchange);
      if (pending) pending.catch(fail).finally(finish);
      else finish();
    } catch (error) {
      fail(error);
      finish();
    }
  };

  const methodsByPath = new Map<string, Route[]>();
  for (const route of routes) {
    const register = { GET: app.get, POST: app.post, HEAD: app.head, DELETE: app.del }[route.method].bind(app);
    register(route.path, serve(route));
    methodsByPath.set(route.path, [...(methodsByPath.get(route.path) ?? []), route]);
  }
  for (const [path, pathRoutes] of methodsByPath) {
    const allowed = pathRoutes.map((r) => r.method).join(', ');
    const first = pathRoutes[0] as Route;
    if (cors.enabled) {
      const preflight = (exchange: Exchange): void => exchange.send(204, '', 'text/plain', cors.preflightHeaders(exchange.headers.get('origin'), [...pathRoutes.map((r) => r.method), 'OPTIONS']));
      app.options(path, serve({ ...first, handler: preflight }));
    }
    app.any(path, serve({ ...first, method: 'GET', handler: () => { throw new ServeError('method_not_allowed', `method not allowed; ${path} accepts ${allowed}`); } }));
  }
  logger.debug({ event: 'routes', routes: routes.map((r) => ({ method: r.method, path: r.path, errors: r.errors.name })) }, 'routes');
  app.any('/*', serve({ method: 'GET', path: '/*', errors: options.unknownPathErrors, handler: (exchange) => { throw new ServeError('not_found', `no route for ${exchange.method} ${exchange.path}`); } }));

  return new Promise((resolve, reject) => {
    app.listen(options.host, options.port, LISTEN_EXCLUSIVE_PORT, (socket) => {
      if (!socket) {
        void listenFailure(options.host, options.port).then(reject);
        return;
      }
      resolve({ port: uWS.us_socket_local_port(socket as unknown as uWS.us_socket), close: () => uWS.us_listen_socket_close(socket) });
    });
  });
}
