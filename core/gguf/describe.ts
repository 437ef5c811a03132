/** What listings (/api/tags, /api/show, /v1/models) say about a GGUF model, from its header alone. */
import { statSync } from 'node:fs';
import { FILE_TYPES, ggufFiles, readGgufHeader, type MetadataValue } from './format.ts';

export interface GgufDescription {
  architecture: string;
  quantization: string;
  contextLength: number | null;
  chatTemplate: string;
  /** Elements of every tensor, as its dimensions give them. */
  parameters: number;
  /** The header's scalar metadata (the vocabulary and other arrays left out), as Ollama's model_info. */
  info: Record<string, MetadataValue>;
}

/**
 * Kept per file while its size and modification time stay the same: reading a header walks the
 * whole vocabulary (~250 ms for a 150k-token one), and listings describe every GGUF file on every
 * request.
 */
const described = new Map<string, { stamp: string; description: GgufDescription }>();

export function describeGguf(path: string): GgufDescription {
  const { size, mtimeMs } = statSync(path);
  const stamp = `${size}:${mtimeMs}`;
  const known = described.get(path);
  if (known?.stamp === stamp) return known.description;
  const description = readDescription(path);
  described.set(path, { stamp, description });
  return description;
}

function readDescription(path: string): GgufDescription {
  const { metadata, tensors } = readGgufHeader(path);
  const architecture = String(metadata.get('general.architecture') ?? 'unknown');
  const fileType = metadata.get('general.file_type');
  // Without general.file_type, the first matrix's type stands for the file.
  const quantization = typeof fileType === 'number' ? (FILE_TYPES[fileType] ?? `file type ${fileType}`) : (tensors.find((t) => t.dims.length === 2)?.type ?? 'unknown');
  const context = metadata.get(`${architecture}.context_length`);
  const template = metadata.get('tokenizer.chat_template');
  const info: Record<string, MetadataValue> = {};
  for (const [key, value] of metadata) {
    if (Array.isArray(value) || key === 'tokenizer.chat_template') continue;
    info[key] = typeof value === 'bigint' ? Number(value) : value;
  }
  return {
    architecture,
    quantization,
    contextLength: typeof context === 'number' ? context : typeof context === 'bigint' ? Number(context) : null,
    chatTemplate: typeof template === 'string' ? template : '',
    parameters: [tensors, ...ggufFiles(path).slice(1).map((part) => readGgufHeader(part).tensors)].flat().reduce((sum, tensor) => sum + tensor.dims.reduce((a, b) => a * b, 1), 0),
    info,
  };
}
