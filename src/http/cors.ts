/** CORS, off unless `--cors-origin` names origins (or '*'): then responses carry the headers and preflights are answered. */
const ALLOWED_REQUEST_HEADERS = 'authorization, content-type, x-request-id';
const EXPOSED_HEADERS = 'x-request-id, retry-after';
const PREFLIGHT_MAX_AGE_SECONDS = '600';

export class CorsPolicy {
  constructor(private readonly origins: readonly string[]) {}

  get enabled(): boolean {
    return this.origins.length > 0;
  }

  /** Headers for an ordinary response to a request from `origin`. */
  responseHeaders(origin: string | undefined): Record<string, string> {
    if (this.origins.includes('*')) return { 'access-control-allow-origin': '*', 'access-control-expose-headers': EXPOSED_HEADERS };
    if (!this.enabled) return {};
    if (origin === undefined || !this.origins.includes(origin)) return { vary: 'Origin' };
    return { 'access-control-allow-origin': origin, 'access-control-expose-headers': EXPOSED_HEADERS, vary: 'Origin' };
  }

  preflightHeaders(origin: string | undefined, methods: readonly string[]): Record<string, string> {
    return {
      ...this.responseHeaders(origin),
      'access-control-allow-methods': methods.join(', '),
      'access-control-allow-headers': ALLOWED_REQUEST_HEADERS,
      'access-control-max-age': PREFLIGHT_MAX_AGE_SECONDS,
    };
  }
}
