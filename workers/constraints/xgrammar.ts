/**
 * xgrammar (MLC's grammar engine, compiled to WebAssembly, npm `@mlc-ai/web-xgrammar`). Its
 * bundle is a UMD script inside a `"type": "module"` package: imported as ESM it finds neither
 * `require` nor `__filename` and only sets a global. Run as the CommonJS module it was built as,
 * it exports its classes and reads its embedded WebAssembly without touching the file system.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as XGrammar from '@mlc-ai/web-xgrammar';

export type { CompiledGrammar, GrammarCompiler, GrammarMatcher, TokenizerInfo, StructuralTagFormat } from '@mlc-ai/web-xgrammar';

type Module = typeof XGrammar;

let loaded: Module | null = null;

export function xgrammar(): Module {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const file = require.resolve('@mlc-ai/web-xgrammar');
  const module = { exports: {} as Module };
  // eslint-disable-next-line @typescript-eslint/no-implied-eval -- the bundle must see CommonJS's names
  new Function('exports', 'module', 'require', '__filename', readFileSync(file, 'utf8'))(module.exports, module, require, file);
  loaded = module.exports;
  return loaded;
}
