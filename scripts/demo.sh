#!/usr/bin/env bash
# Set up, build, and run `kiln demo` (a model kiln writes itself, run end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release
cmake --build --preset release -j"$(nproc)" --target kiln
./build/release/kiln demo "$@"
