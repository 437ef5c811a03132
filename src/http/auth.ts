/**
 * Who may call which route. `--api-key` guards every route but the probes and the status page; `--admin-key`, when set,
 * guards admin mutations instead (and also opens every other route). Keys are compared through
 * their SHA-256 digests so the comparison takes the same time whatever the key's length or
 * how many leading bytes a guess gets right.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ServeError } from '../../core/errors.ts';

export type Access = 'public' | 'client' | 'admin';

/**
 * Health and readiness (load balancers' probes send no key), and the status page itself: a
 * browser cannot send a bearer key when opening a page; the page holds no data and sends the key
 * it is given with its /dashboard/data polls.
 */
const PUBLIC_PATHS = new Set(['/admin/health', '/health', '/ready', '/dashboard']);
const READ_METHODS = new Set(['GET', 'HEAD']);

/**
 * Every admin route that is not a plain read (load, unload, and any added later) is a mutation.
 * CORS preflights are public: browsers never send credentials with them.
 */
export function routeAccess(method: string, path: string): Access {
  if (PUBLIC_PATHS.has(path) || method.toUpperCase() === 'OPTIONS') return 'public';
  if (path.startsWith('/admin/') && !READ_METHODS.has(method.toUpperCase())) return 'admin';
  return 'client';
}

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

export class Authenticator {
  private readonly apiKey: Buffer | null;
  private readonly adminKey: Buffer | null;

  constructor(keys: { apiKey: string | null; adminKey: string | null }) {
    this.apiKey = keys.apiKey ? digest(keys.apiKey) : null;
    this.adminKey = keys.adminKey ? digest(keys.adminKey) : null;
  }

  /** Throws a 401 unless the Authorization header carries a key that opens `access`. */
  check(access: Access, authorization: string | undefined): void {
    const keys = this.keysOpening(access);
    if (keys.length === 0) return;
    const match = /^Bearer[ \t]+(\S+)\s*$/i.exec(authorization ?? '');
    if (!match) throw new ServeError('invalid_api_key', 'missing API key: send Authorization: Bearer <key>');
    const given = digest(match[1] as string);
    // Every key is compared, so the time taken does not say which one matched.
    const matched = keys.map((key) => timingSafeEqual(key, given)).includes(true);
    if (!matched) throw new ServeError('invalid_api_key', access === 'admin' && this.adminKey ? 'this route needs the admin key' : 'invalid API key');
  }

  /** No keys: the route is open. */
  private keysOpening(access: Access): Buffer[] {
    if (access === 'public') return [];
    if (access === 'admin') return [this.adminKey ?? this.apiKey].filter((key): key is Buffer => key !== null);
    return this.apiKey ? [this.apiKey, this.adminKey].filter((key): key is Buffer => key !== null) : [];
  }
}
