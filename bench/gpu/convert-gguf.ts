/**
 * A Hugging Face model folder -> one GGUF file, through the server's own converter
 * (src/gguf/convert.ts). Bundled into plain JS for machines without tsx.
 *
 * usage: node convert-gguf.js <model-dir> <out.gguf> <F32|F16|Q8_0|Q4_0>
 */
import { convertToGguf } from '../../src/gguf/convert.ts';
import { FILE_TYPE_OF, type TensorType } from '../../core/gguf/format.ts';

const [modelDir, outPath, type] = process.argv.slice(2);
if (!modelDir || !outPath || !type || !(type in FILE_TYPE_OF)) {
  process.stderr.write(`usage: convert-gguf <model-dir> <out.gguf> <${Object.keys(FILE_TYPE_OF).join('|')}>\n`);
  process.exit(2);
}
const started = performance.now();
convertToGguf(modelDir, outPath, { type: type as TensorType, name: 'qwen2.5-0.5b-shape' });
process.stdout.write(`${JSON.stringify({ outPath, type, ms: Math.round(performance.now() - started) })}\n`);
