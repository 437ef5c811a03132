/**
 * The live status page: GET /dashboard serves one self-contained HTML file (no CDN, works
 * offline) that polls GET /dashboard/data on each host it is given. The data is the admin
 * status (shared-memory telemetry) plus latency percentiles from the main thread's histograms.
 */
import { readFileSync } from 'node:fs';
import type { Route } from '../http/server.ts';
import { openAiError } from './errors.ts';
import { packagePath } from '../paths.ts';
import { statusBody } from './admin.ts';
import type { ServeContext } from './context.ts';

const PAGE = packagePath('src', 'dashboard', 'index.html');

export function dashboardData(ctx: ServeContext): Record<string, unknown> {
  return { ...statusBody(ctx), sampled_at_ms: Date.now(), ...ctx.latency.summary() };
}

export function dashboardRoutes(ctx: ServeContext): Route[] {
  const page = readFileSync(PAGE);
  return [
    { method: 'GET', path: '/dashboard', errors: openAiError, quiet: true, handler: (exchange) => exchange.send(200, page, 'text/html; charset=utf-8', { 'cache-control': 'no-cache' }) },
    { method: 'GET', path: '/dashboard/data', errors: openAiError, quiet: true, handler: (exchange) => exchange.json(200, dashboardData(ctx), { 'cache-control': 'no-store' }) },
  ];
}
