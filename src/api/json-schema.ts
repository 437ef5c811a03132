/**
 * The JSON Schema subset that constrained decoding enforces. A keyword outside it is refused
 * with a 400 rather than silently ignored: ignoring `pattern` or `format` would return output
 * that the client's own validator then rejects.
 */
import type { JsonSchema } from '../../core/protocol.ts';
import { badRequest } from '../../core/errors.ts';

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

const RANGES: [string, string][] = [['minItems', 'maxItems'], ['minLength', 'maxLength'], ['minimum', 'maximum']];

/** What a local reference ("#/$defs/x") points at in the schema, or undefined. */
function resolve(root: Record<string, unknown>, ref: string): unknown {
  let at: unknown = root;
  for (const part of ref.slice(2).split('/').map((p) => decodeURIComponent(p).replaceAll('~1', '/').replaceAll('~0', '~'))) {
    if (!isObject(at) || !(part in at)) return undefined;
    at = at[part];
  }
  return at;
}

function checkNode(node: unknown, path: string, field: string, root: Record<string, unknown>): void {
  if (typeof node === 'boolean') return;
  if (!isObject(node)) throw badRequest(`${path} must be a JSON schema object`, field);
  for (const key of Object.keys(node)) {
    if (!KEYWORDS.has(key)) throw badRequest(`${path}: schema keyword '${key}' is not supported for constrained output (supported: ${SUPPORTED_SCHEMA_KEYWORDS.join(', ')})`, field);
  }
  for (const [low, high] of RANGES) {
    const [min, max] = [node[low], node[high]];
    if (min !== undefined && typeof min !== 'number') throw badRequest(`${path}.${low} must be a number`, field);
    if (max !== undefined && typeof max !== 'number') throw badRequest(`${path}.${high} must be a number`, field);
    if (typeof min === 'number' && typeof max === 'number' && min > max) throw badRequest(`${path}: ${low} ${min} is greater than ${high} ${max}`, field);
  }
  const types = Array.isArray(node.type) ? node.type : node.type === undefined ? [] : [node.type];
  for (const type of types) if (typeof type !== 'string' || !TYPES.has(type)) throw badRequest(`${path}.type: unknown type ${JSON.stringify(type)}`, field);
  if (node.properties !== undefined) {
    if (!isObject(node.properties)) throw badRequest(`${path}.properties must be an object`, field);
    for (const [name, child] of Object.entries(node.properties)) checkNode(child, `${path}.properties.${name}`, field, root);
  }
  if (node.required !== undefined && !(Array.isArray(node.required) && node.required.every((r) => typeof r === 'string'))) {
    throw badRequest(`${path}.required must be a list of property names`, field);
  }
  if (node.items !== undefined) checkNode(node.items, `${path}.items`, field, root);
  if (node.additionalProperties !== undefined) checkNode(node.additionalProperties, `${path}.additionalProperties`, field, root);
  if (node.enum !== undefined && !(Array.isArray(node.enum) && node.enum.length > 0)) throw badRequest(`${path}.enum must be a non-empty list`, field);
  if (node.anyOf !== undefined) {
    if (!Array.isArray(node.anyOf) || node.anyOf.length === 0) throw badRequest(`${path}.anyOf must be a non-empty list`, field);
    node.anyOf.forEach((child, i) => checkNode(child, `${path}.anyOf[${i}]`, field, root));
  }
  for (const defs of ['$defs', 'definitions'] as const) {
    const value = node[defs];
    if (value === undefined) continue;
    if (!isObject(value)) throw badRequest(`${path}.${defs} must be an object`, field);
    for (const [name, child] of Object.entries(value)) checkNode(child, `${path}.${defs}.${name}`, field, root);
  }
  if (node.$ref !== undefined) {
    if (!(typeof node.$ref === 'string' && node.$ref.startsWith('#/'))) throw badRequest(`${path}.$ref: only references inside the schema ("#/...") are supported`, field);
    if (!isObject(resolve(root, node.$ref))) throw badRequest(`${path}.$ref: ${node.$ref} points at no schema`, field);
  }
}

/** Returns the schema when every keyword in it is one the grammar enforces; a 400 names the first that is not. */
export function checkedSchema(schema: unknown, field: string): JsonSchema {
  if (!isObject(schema)) throw badRequest(`'${field}' must be a JSON schema object`, field);
  checkNode(schema, field, field, schema);
  return schema;
}
