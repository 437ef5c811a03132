/** The structured-output fields of both APIs, translated to one output format. */
import type { OutputFormat } from '../../core/protocol.ts';
import { badRequest } from '../../core/errors.ts';
import { checkedSchema } from './json-schema.ts';

/** Any JSON object: OpenAI's JSON mode and Ollama's format "json". */
const ANY_OBJECT: OutputFormat = { type: 'json', schema: { type: 'object' }, closed: false };

/** OpenAI's response_format: text, json_object, or json_schema {name, schema, strict}. */
export function openAiResponseFormat(value: Record<string, unknown> | undefined): OutputFormat | undefined {
  if (!value || value.type === 'text') return undefined;
  if (value.type === 'json_object') return ANY_OBJECT;
  if (value.type !== 'json_schema') throw badRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'", 'response_format');
  const spec = value.json_schema as { name?: unknown; schema?: unknown } | undefined;
  if (typeof spec !== 'object' || spec === null || typeof spec.name !== 'string') throw badRequest("'response_format.json_schema' must be {name, schema, strict}", 'response_format');
  // Constrained output always keeps to the schema, strict or not, with no properties beyond those listed.
  return { type: 'json', schema: checkedSchema(spec.schema ?? { type: 'object' }, 'response_format.json_schema.schema'), closed: true };
}

/** Ollama's format: "json" or a JSON schema. */
export function ollamaFormat(value: unknown): OutputFormat | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (value === 'json') return ANY_OBJECT;
  if (typeof value === 'string') throw badRequest(`'format' must be "json" or a JSON schema, got ${JSON.stringify(value)}`, 'format');
  return { type: 'json', schema: checkedSchema(value, 'format'), closed: true };
}
