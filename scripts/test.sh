#!/usr/bin/env bash
# Set up, build once, fuzz the GGUF reader (60 s) and the Jinja interpreter (30 s) under ASan +
# UBSan, then run every test with ctest.
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
cmake --build --preset fuzz -j"$jobs" --target gguf_fuzz jinja_fuzz
fuzz() {  # fuzz NAME SECONDS SEED_DIR
  local corpus=build/fuzz/corpus-$1
  mkdir -p "$corpus" "$3"
  echo "kiln test: fuzzing $1 for $2 s"
  ./build/fuzz/$1_fuzz -max_total_time="$2" -max_len=16384 -print_final_stats=1 "$corpus" "$3" 2>&1 | tail -n 8
}
# The GGUF seed corpus is written by the GGUF tests (real file headers + synthetic files); the
# Jinja one is the shared chat templates.
[ -d build/release/fuzz-corpus/gguf ] || echo "kiln test: no shared data, fuzzing GGUF from an empty corpus"
fuzz gguf "${KILN_FUZZ_SECONDS:-60}" build/release/fuzz-corpus/gguf
mkdir -p build/release/fuzz-corpus/jinja
cp ../shared/templates/*.jinja build/release/fuzz-corpus/jinja/ 2>/dev/null || true
fuzz jinja "${KILN_FUZZ_SECONDS:-30}" build/release/fuzz-corpus/jinja

# Which CPU kernel levels this machine runs: the model reference tests run once per level, and the
# levels the CPU lacks are reported by ctest as skipped.
./build/release/kiln_tests --gtest_filter='KernelLevels.ThisCpu' | grep '^\[ levels \]' | sed 's/^\[ levels \]/kiln test:/' || true
# A failed test's output is printed where it finished, far above the summary; run the failed ones
# again at the end, one at a time, so their output is the last thing printed. The exit status stays
# the first run's.
if ! ctest --preset release -j"$jobs"; then
  echo "kiln test: FAILED; running the failed tests again, alone, with their output:"
  ctest --preset release --rerun-failed --output-on-failure -j1 || true
  exit 1
fi
