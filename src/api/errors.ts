/** Each API family's error shape on the wire; the status comes from the code (src/http/status.ts). */
import type { ErrorWriter } from '../http/server.ts';
import { errorHeaders, httpStatus } from '../http/status.ts';

/** OpenAI's error shape; the admin routes, the metrics and unknown paths use it too. */
export const openAiError: ErrorWriter = (exchange, error) => {
  const status = httpStatus(error);
  const type = status >= 500 ? 'server_error' : status === 404 && error.code !== 'model_not_found' ? 'not_found_error' : status === 401 ? 'authentication_error' : 'invalid_request_error';
  exchange.json(status, { error: { message: error.message, type, param: error.param ?? null, code: error.code } }, errorHeaders(error));
};

/** Ollama's error shape: one string. */
export const ollamaError: ErrorWriter = (exchange, error) => exchange.json(httpStatus(error), { error: error.message }, errorHeaders(error));
