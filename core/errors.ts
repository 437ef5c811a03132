/** Every failure a client can see is one of these codes; routes map them to their own wire shape. */
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
  | 'hub_unreachable'
  | 'download_failed'
  | 'disk_full'
  | 'internal_error';

export interface ServeErrorShape {
  readonly status: number;
  readonly code: ErrorCode;
  readonly message: string;
  readonly param?: string;
}

export class ServeError extends Error implements ServeErrorShape {
  readonly status: number;
  readonly code: ErrorCode;
  readonly param?: string;

  constructor(status: number, code: ErrorCode, message: string, param?: string) {
    super(message);
    this.name = 'ServeError';
    this.status = status;
    this.code = code;
    if (param !== undefined) this.param = param;
  }

  toShape(): ServeErrorShape {
    return { status: this.status, code: this.code, message: this.message, ...(this.param ? { param: this.param } : {}) };
  }

  static fromShape(shape: ServeErrorShape): ServeError {
    return new ServeError(shape.status, shape.code, shape.message, shape.param);
  }

  /** Anything thrown that is not already a ServeError is an internal failure; its message is kept for the log. */
  static from(error: unknown): ServeError {
    if (error instanceof ServeError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new ServeError(500, 'internal_error', message);
  }
}

/** A client refused for being one too many may come back shortly: every API shape says so in Retry-After. */
export const errorHeaders = (error: ServeError): Record<string, string> => (error.code === 'queue_full' ? { 'retry-after': '1' } : {});

export const badRequest = (message: string, param?: string): ServeError =>
  new ServeError(400, 'invalid_request', message, param);
