/** Typed reading of a JSON request body: every wrong type or out-of-range value is a 400 naming the field. */
import { badRequest } from '../../core/errors.ts';

interface NumberRule {
  min?: number;
  max?: number;
  /** Lower bound that the value must exceed. */
  above?: number;
  integer?: boolean;
}

const describe = (value: unknown): string => (value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value);

export class Fields {
  constructor(private readonly body: Record<string, unknown>, private readonly prefix = '') {}

  static strict(body: Record<string, unknown>, known: readonly string[], prefix = ''): Fields {
    const unknown = Object.keys(body).filter((key) => !known.includes(key));
    if (unknown.length > 0) throw badRequest(`unknown field${unknown.length > 1 ? 's' : ''}: ${unknown.map((k) => prefix + k).join(', ')}`, prefix + unknown[0]);
    return new Fields(body, prefix);
  }

  has(name: string): boolean {
    return this.body[name] !== undefined && this.body[name] !== null;
  }

  raw(name: string): unknown {
    return this.body[name];
  }

  string(name: string): string | undefined {
    const value = this.body[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'string') throw badRequest(`'${this.prefix}${name}' must be a string, got ${describe(value)}`, this.prefix + name);
    return value;
  }

  requiredString(name: string): string {
    const value = this.string(name);
    if (value === undefined) throw badRequest(`'${this.prefix}${name}' is required`, this.prefix + name);
    return value;
  }

  boolean(name: string): boolean | undefined {
    const value = this.body[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'boolean') throw badRequest(`'${this.prefix}${name}' must be a boolean, got ${describe(value)}`, this.prefix + name);
    return value;
  }

  number(name: string, rule: NumberRule = {}): number | undefined {
    const value = this.body[name];
    if (value === undefined || value === null) return undefined;
    const field = this.prefix + name;
    if (typeof value !== 'number' || !Number.isFinite(value)) throw badRequest(`'${field}' must be a number, got ${describe(value)}`, field);
    if (rule.integer && !Number.isInteger(value)) throw badRequest(`'${field}' must be an integer, got ${value}`, field);
    if (rule.min !== undefined && value < rule.min) throw badRequest(`'${field}' must be >= ${rule.min}, got ${value}`, field);
    if (rule.above !== undefined && value <= rule.above) throw badRequest(`'${field}' must be > ${rule.above}, got ${value}`, field);
    if (rule.max !== undefined && value > rule.max) throw badRequest(`'${field}' must be <= ${rule.max}, got ${value}`, field);
    return value;
  }

  /** A string or a list of strings (OpenAI's and Ollama's `stop`). */
  stringList(name: string, maxItems: number): string[] {
    const value = this.body[name];
    if (value === undefined || value === null) return [];
    const field = this.prefix + name;
    const list = typeof value === 'string' ? [value] : value;
    if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) throw badRequest(`'${field}' must be a string or a list of strings`, field);
    if (list.length > maxItems) throw badRequest(`'${field}' may hold at most ${maxItems} entries`, field);
    return (list as string[]).filter((s) => s.length > 0);
  }

  object(name: string): Record<string, unknown> | undefined {
    const value = this.body[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'object' || Array.isArray(value)) throw badRequest(`'${this.prefix}${name}' must be an object, got ${describe(value)}`, this.prefix + name);
    return value as Record<string, unknown>;
  }
}
