/**
 * Where and how models are fetched from the Hugging Face Hub, read from the environment the way
 * huggingface_hub reads it, so the server, `mlx-server pull` and Python tools share one cache.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { badRequest } from '../../core/errors.ts';
import { canonicalModelName, huggingFaceHubCache } from '../models/registry.ts';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubSettings {
  endpoint: string;
  token: string | null;
  offline: boolean;
  cacheDir: string;
}

/** `huggingface-cli login` stores the token in a file; HF_TOKEN wins over it. */
function storedToken(env: NodeJS.ProcessEnv): string | null {
  const path = env.HF_TOKEN_PATH ?? join(env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface'), 'token');
  return existsSync(path) ? readFileSync(path, 'utf8').trim() || null : null;
}

export function hubSettings(env: NodeJS.ProcessEnv = process.env): HubSettings {
  return {
    endpoint: (env.HF_ENDPOINT || DEFAULT_ENDPOINT).replace(/\/+$/, ''),
    token: env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || storedToken(env),
    offline: /^(1|on|yes|true)$/i.test(env.HF_HUB_OFFLINE ?? ''),
    cacheDir: huggingFaceHubCache(env),
  };
}

/** `ORG/NAME`, or `ORG/NAME:QUANT` for the GGUF file of that quantization in the repository. */
const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*(:[A-Za-z0-9_]+)?$/;

/** A repository id from what a user typed: `ORG/NAME` or `ORG/NAME:QUANT`, optionally as an hf.co URL or with Ollama's `:latest` tag. */
export function parseRepoId(model: string): string {
  const repo = canonicalModelName(model);
  if (!REPO_ID.test(repo) || repo.includes('..')) {
    throw badRequest(`'${model}' is not a Hugging Face model id; use ORG/NAME, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit, or ORG/NAME:QUANT for one GGUF file of a repository, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M`, 'model');
  }
  return repo;
}

/** True when `name` could be fetched from the Hub (a repository id, and the Hub is not switched off). */
export const isPullable = (name: string, settings: HubSettings): boolean => !settings.offline && REPO_ID.test(name) && !name.includes('..');

/** `ORG/NAME:QUANT` split into the repository and the quantization of the GGUF file wanted from it (null: a safetensors model). */
export function splitQuantization(ref: string): { repo: string; quantization: string | null } {
  const tag = ref.lastIndexOf(':');
  return tag < 0 ? { repo: ref, quantization: null } : { repo: ref.slice(0, tag), quantization: ref.slice(tag + 1) };
}
