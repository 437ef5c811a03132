/**
 * The JSON Schema subset that constrained decoding enforces. A keyword outside it is refused
 * with a 400 rather than silently ignored: ignoring `pattern` or `format` would return output
 * that the client's own validator then rejects.
 */
import type { JsonSchema } from '../engine/protocol.ts';
import { badRequest } from '../errors.ts';

const TYPES = new Set(['object', 'array', 'string', 'number', 'integer', 'boolean', 'null']);
const ANNOTATIONS = ['title', 'description', 'default', 'examples', '$schema', '$id', '$comment'];
const KEYWORDS = new Set([
  ...ANNOTATIONS,
  'type', 'properties', 'required', 'additionalProperties', 'items', 'enum', 'const', 'anyOf',
  'minItems', 'maxItems', 'minLength', 'maxLength', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
  '$ref', '$defs', 'definitions',
]);
export const SUPPORTED_SCHEMA_KEYWORDS = [...KEYWORDS].filter((k) => !ANNOTATIONS.includes(k));

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function checkNode(node: unknown, path: string, field: string): void {
  if (typeof node === 'boolean') return;
  if (!isObject(node)) throw badRequest(`${path} must be a JSON schema object`, field);
  for (const key of Object.keys(node)) {
    if (!KEYWORDS.has(key)) throw badRequest(`${path}: schema keyword '${key}' is not supported for constrained output (supported: ${SUPPORTED_SCHEMA_KEYWORDS.join(', ')})`, field);
  }
  const types = Array.isArray(node.type) ? node.type : node.type === undefined ? [] : [node.type];
  for (const type of types) if (typeof type !== 'string' || !TYPES.has(type)) throw badRequest(`${path}.type: unknown type ${JSON.stringify(type)}`, field);
  if (node.properties !== undefined) {
    if (!isObject(node.properties)) throw badRequest(`${path}.properties must be an object`, field);
    for (const [name, child] of Object.entries(node.properties)) checkNode(child, `${path}.properties.${name}`, field);
  }
  if (node.required !== undefined && !(Array.isArray(node.required) && node.required.every((r) => typeof r === 'string'))) {
    throw badRequest(`${path}.required must be a list of property names`, field);
  }
  if (node.items !== undefined) checkNode(node.items, `${path}.items`, field);
  if (node.additionalProperties !== undefined) checkNode(node.additionalProperties, `${path}.additionalProperties`, field);
  if (node.enum !== undefined && !(Array.isArray(node.enum) && node.enum.length > 0)) throw badRequest(`${path}.enum must be a non-empty list`, field);
  if (node.anyOf !== undefined) {
    if (!Array.isArray(node.anyOf) || node.anyOf.length === 0) throw badRequest(`${path}.anyOf must be a non-empty list`, field);
    node.anyOf.forEach((child, i) => checkNode(child, `${path}.anyOf[${i}]`, field));
  }
  for (const defs of ['$defs', 'definitions'] as const) {
    const value = node[defs];
    if (value === undefined) continue;
    if (!isObject(value)) throw badRequest(`${path}.${defs} must be an object`, field);
    for (const [name, child] of Object.entries(value)) checkNode(child, `${path}.${defs}.${name}`, field);
  }
  if (node.$ref !== undefined && !(typeof node.$ref === 'string' && node.$ref.startsWith('#/'))) {
    throw badRequest(`${path}.$ref: only references inside the schema ("#/...") are supported`, field);
  }
}

/** Returns the schema when every keyword in it is one the grammar enforces; a 400 names the first that is not. */
export function checkedSchema(schema: unknown, field: string): JsonSchema {
  if (!isObject(schema)) throw badRequest(`'${field}' must be a JSON schema object`, field);
  checkNode(schema, field, field);
  return schema;
}
