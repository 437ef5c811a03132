#!/usr/bin/env bash
# The comprehensive soak test under the script name operators already run: the TypeScript suite with the given flags,
# e.g.  soak/air_comprehensive_test.sh --url http://mac-mini-3:11437 --model mlx-community/Qwen2.5-7B-Instruct-4bit
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx soak/main.ts "$@"
