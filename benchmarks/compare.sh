#!/usr/bin/env bash
# Side-by-side CPU benchmark of kiln against llama.cpp (and ik_llama.cpp) on the same GGUF files, in
# one run: the tools of ../shared/peer/bin are run alternately with `kiln bench` (round by round, so
# a noisy machine hurts both alike) and the medians are printed as one table with ratios.
# Not part of CI (it takes long and needs the peer's binaries). ik_llama.cpp's llama-bench has no -d:
# it is compared at depth 0 only.
#
#   bash benchmarks/compare.sh [-r ROUNDS] [-t THREADS] [--quick] [--models DIR] [--only NAME]
#
# Bench models of real shapes are written on first use into --models (default build/bench-models):
# kiln_make_bench_model writes the F16 originals with kiln's own GGUF writer, llama-quantize makes
# Q4_0 / Q4_K_M / Q8_0 from them (TinyLlama-1.1B's shapes), Q4_K_M of GLM-4.7-Flash's layer shapes
# (deepseek2 with MLA, 64 experts of 1536, top 4) and of Qwen3-30B-A3B's (128 experts of 768, top 8),
# each cut to 4 layers (their F16 originals take 3.9 and 4.8 GB of disk). --only NAME keeps
# the files whose name contains NAME. Tests per file: pp512, tg128, and pp512 + tg32 at depth 4096 and
# 16384 (llama.cpp with -fa 0 and -fa 1; the better of the two is compared). --quick: pp512/tg128 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
THREADS=2
QUICK=0
MODELS=build/bench-models
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --models) MODELS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "usage: $0 [-r ROUNDS] [-t THREADS] [--quick] [--models DIR] [--only NAME]" >&2; exit 2 ;;
  esac
done
PEER=${KILN_PEER_BIN:-../shared/peer/bin}
KILN=build/release/kiln
MAKE=build/release/kiln_make_bench_model
for f in "$PEER/llama-bench" "$PEER/llama-quantize" "$KILN" "$MAKE"; do
  [ -x "$f" ] || { echo "compare.sh: $f is missing (build kiln with 'cmake --build --preset release'; the peer tools come from ../shared/peer)" >&2; exit 1; }
done
mkdir -p "$MODELS"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

model() {  # model SHAPE TYPE -> path (written and quantized on first use)
  local shape=$1 type=$2 lower
  lower=$(echo "$type" | tr 'A-Z' 'a-z')
  local f16="$MODELS/$shape.f16.gguf" out="$MODELS/$shape.$lower.gguf"
  [ -f "$f16" ] || "$MAKE" "$shape" "$f16" >&2
  [ -f "$out" ] || "$PEER/llama-quantize" "$f16" "$out" "$type" "$THREADS" > "$OUT/quantize.log" 2>&1 ||
    { cat "$OUT/quantize.log" >&2; exit 1; }
  echo "$out"
}

# One measurement: prints "TEST T/S" lines (TEST like pp512, tg128, pp512@d4096).
run_kiln() {  # FILE P N DEPTH
  "$KILN" bench -m "$1" -p "$2" -n "$3" -d "$4" -r 1 -t "$THREADS" -q --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); [print(t["test"]+("@d%d"%d["depth"] if d["depth"] else ""), t["tps"]) for t in d["tests"]]'
}
run_peer() {  # BIN FILE P N DEPTH FA
  local depth=()
  [ "$5" = 0 ] || depth=(-d "$5")
  "$1" -m "$2" -p "$3" -n "$4" "${depth[@]}" -fa "$6" -r 1 -t "$THREADS" -o json 2>/dev/null |
    python3 -c 'import json,sys
for x in json.load(sys.stdin):
    t = ("pp%d" % x["n_prompt"]) if x["n_prompt"] else ("tg%d" % x["n_gen"])
    if x.get("n_depth"): t += "@d%d" % x["n_depth"]
    print(t, x["avg_ts"])'
}

cases() {  # the (P N DEPTH) runs per file
  echo "512 128 0"
  if [ "$QUICK" = 0 ]; then echo "512 32 4096"; echo "512 32 16384"; fi
}

FILES=()
for spec in tinyllama:Q4_0 tinyllama:Q4_K_M tinyllama:Q8_0 glm4.7-flash:Q4_K_M qwen3-30b-a3b:Q4_K_M; do
  [ -z "$ONLY" ] || [[ "$spec" == *"$ONLY"* ]] || continue
  FILES+=("$(model "${spec%%:*}" "${spec##*:}")")
done

for f in "${FILES[@]}"; do
  name=$(basename "$f" .gguf)
  echo "compare.sh: $name ($ROUNDS rounds)" >&2
  for r in $(seq "$ROUNDS"); do
    while read -r P N D; do
      run_kiln "$f" "$P" "$N" "$D" | sed "s/^/$name kiln /" >> "$OUT/results"
      run_peer "$PEER/llama-bench" "$f" "$P" "$N" "$D" 0 | sed "s/^/$name llama /" >> "$OUT/results"
      run_peer "$PEER/llama-bench" "$f" "$P" "$N" "$D" 1 | sed "s/^/$name llama-fa /" >> "$OUT/results"
      if [ -x "$PEER/ik-llama-bench" ] && [ "$D" = 0 ]; then  # ik's llama-bench has no -d
        run_peer "$PEER/ik-llama-bench" "$f" "$P" "$N" "$D" 1 | sed "s/^/$name ik /" >> "$OUT/results"
      fi
    done < <(cases)
  done
done

python3 - "$OUT/results" "$THREADS" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f, who, test, tps = line.split()
    rows[(f, test, who)].append(float(tps))
med = {k: statistics.median(v) for k, v in rows.items()}
keys = sorted({(f, t) for f, t, _ in rows}, key=lambda k: (k[0], k[1].split("@")[1] if "@" in k[1] else "", k[1]))
flags = open("/proc/cpuinfo").read()
isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "no AVX2"
print(f"\nkiln vs llama.cpp, t/s (median of runs alternated in one session), {sys.argv[2]} threads, CPU with {isa}\n")
print("| file | test | kiln | llama.cpp (fa 0 / fa 1) | kiln / llama.cpp best | ik_llama.cpp | kiln / ik |")
print("|---|---|---|---|---|---|---|")
for f, t in keys:
    k = med.get((f, t, "kiln")); a = med.get((f, t, "llama")); b = med.get((f, t, "llama-fa")); ik = med.get((f, t, "ik"))
    best = max(x for x in (a, b) if x is not None) if (a or b) else None
    fmt = lambda v: f"{v:.1f}" if v else "-"
    print(f"| {f} | {t} | {fmt(k)} | {fmt(a)} / {fmt(b)} | {k / best:.2f} |" if k and best else f"| {f} | {t} | {fmt(k)} | {fmt(a)} / {fmt(b)} | - |",
          f"{fmt(ik)} | {k / ik:.2f} |" if k and ik else f"{fmt(ik)} | - |")
PY
