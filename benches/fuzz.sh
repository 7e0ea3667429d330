#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) on its corpus in
# fuzz/corpus/<target> (new inputs are added there), and prints one line per
# target: executions, coverage (libFuzzer's cov/ft) and corpus size.
#     benches/fuzz.sh [SECONDS] [TARGET...]
# Stable toolchain without a sanitizer (cargo fuzz ... --sanitizer none);
# a crash stops with its reproducer in fuzz/artifacts/<target>/ and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
cd fuzz
cargo fuzz build --sanitizer none -O >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if ! cargo fuzz run "$t" --sanitizer none -O "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t FAILED (reproducer in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  first=$(grep -oE 'INITED cov: [0-9]+ ft: [0-9]+' "$log" | head -1 | sed 's/INITED //' || true)
  last=$(grep -E '#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || echo "cov: ? ft: ?")
  echo "$t: ${secs} s, $execs executions, ${first:-?} at start -> $last, corpus $(ls "corpus/$t" | wc -l) files"
  rm -f "$log"
done
