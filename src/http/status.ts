/** The one place an error's code becomes an HTTP status; the code says what went wrong, this says how HTTP reports it. */
import type { ErrorCode, ServeError } from '../../core/errors.ts';

const STATUS: Record<ErrorCode, number> = {
  invalid_json: 400,
  invalid_request: 400,
  unsupported: 400,
  context_length_exceeded: 400,
  kv_budget_exceeded: 400,
  cancelled: 400,
  invalid_api_key: 401,
  hub_unauthorized: 401,
  hub_forbidden: 403,
  model_not_found: 404,
  not_found: 404,
  method_not_allowed: 405,
  body_timeout: 408,
  nothing_loaded: 409,
  download_in_progress: 409,
  body_too_large: 413,
  unsupported_model: 422,
  model_load_failed: 422,
  internal_error: 500,
  worker_failed: 500,
  runtime_check_failed: 500,
  download_failed: 502,
  queue_full: 503,
  insufficient_memory: 503,
  shutting_down: 503,
  hub_unreachable: 503,
  request_timeout: 504,
  disk_full: 507,
};

export const httpStatus = (error: Pick<ServeError, 'code'>): number => STATUS[error.code];

/** A client refused for being one too many may come back shortly: every API shape says so in Retry-After. */
export const errorHeaders = (error: ServeError): Record<string, string> => (error.code === 'queue_full' ? { 'retry-after': '1' } : {});
