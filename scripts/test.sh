#!/usr/bin/env bash
# Set up, build once, fuzz the GGUF reader for 60 s (ASan + UBSan), then run every test with ctest.
# KILN_FUZZ_SECONDS overrides the fuzzing time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

cmake --preset release
cmake --build --preset release -j"$jobs"

# The fuzz seed corpus is written by the GGUF tests (real file headers + synthetic files).
./build/release/kiln_tests --gtest_filter='Gguf.SharedFilesOpen' --gtest_brief=1 >/dev/null || true
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$jobs" --target gguf_fuzz
corpus=build/fuzz/corpus-gguf
mkdir -p "$corpus"
seeds=build/release/fuzz-corpus/gguf
[ -d "$seeds" ] || { mkdir -p "$seeds"; echo "kiln test: no shared data, fuzzing from an empty corpus"; }
echo "kiln test: fuzzing the GGUF reader for ${KILN_FUZZ_SECONDS:-60} s"
./build/fuzz/gguf_fuzz -max_total_time="${KILN_FUZZ_SECONDS:-60}" -max_len=16384 -print_final_stats=1 \
  "$corpus" "$seeds" 2>&1 | tail -n 12

ctest --preset release -j"$jobs"
