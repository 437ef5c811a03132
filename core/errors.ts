/** Every failure a client can see is one of these codes; the HTTP edge maps them to a status and each API to its wire shape. */
export type ErrorCode =
  | 'invalid_json'
  | 'invalid_request'
  | 'model_not_found'
  | 'not_found'
  | 'method_not_allowed'
  | 'body_too_large'
  | 'body_timeout'
  | 'invalid_api_key'
  | 'context_length_exceeded'
  | 'kv_budget_exceeded'
  | 'unsupported_model'
  | 'unsupported'
  | 'model_load_failed'
  | 'nothing_loaded'
  | 'queue_full'
  | 'insufficient_memory'
  | 'request_timeout'
  | 'shutting_down'
  | 'cancelled'
  | 'worker_failed'
  | 'runtime_check_failed'
  | 'hub_unauthorized'
  | 'hub_forbidden'
  | 'download_in_progress'
  | 'hub_unreachable'
  | 'download_failed'
  | 'disk_full'
  | 'internal_error';

/** What crosses the thread boundary; the edge (src/http/status.ts) turns a code into its HTTP status. */
export interface ServeErrorShape {
  readonly code: ErrorCode;
  readonly message: string;
  readonly param?: string;
}

/** A failure that says what went wrong, not how any transport reports it. */
export class ServeError extends Error implements ServeErrorShape {
  readonly code: ErrorCode;
  readonly param?: string;

  constructor(code: ErrorCode, message: string, param?: string) {
    super(message);
    this.name = 'ServeError';
    this.code = code;
    if (param !== undefined) this.param = param;
  }

  toShape(): ServeErrorShape {
    return { code: this.code, message: this.message, ...(this.param ? { param: this.param } : {}) };
  }

  static fromShape(shape: ServeErrorShape): ServeError {
    return new ServeError(shape.code, shape.message, shape.param);
  }

  /** Anything thrown that is not already a ServeError is an internal failure; its message is kept for the log. */
  static from(error: unknown): ServeError {
    if (error instanceof ServeError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new ServeError('internal_error', message);
  }
}

export const badRequest = (message: string, param?: string): ServeError => new ServeError('invalid_request', message, param);
