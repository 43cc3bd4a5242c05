#!/usr/bin/env bash
# Fuzz every headcount-core target for N seconds each (default 20); exit 1 if any crashed.
#   fuzz/run.sh [seconds]
#   FUZZ_TARGETS="jwt config" fuzz/run.sh 60      only these targets
# Stable Rust is enough: RUSTC_BOOTSTRAP=1 makes it accept cargo-fuzz's -Z flags.
# cargo-fuzz is installed into <repo>/.tools when missing. New corpus entries go to
# fuzz/corpus/<target> (seeded from fuzz/seeds/<target>), crashes to fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
SECS=${1:-20}
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
export PATH=$ROOT/.tools/bin:$PATH

if [[ $(cargo-fuzz --version 2>/dev/null || true) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION into $ROOT/.tools"
  cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --root "$ROOT/.tools"
fi

# -a: debug assertions and overflow checks on, so arithmetic overflow is a crash too.
# No sanitizer: the core is #![forbid(unsafe_code)]; ASan would about halve the exec rate.
FLAGS=(--sanitizer none -a)
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

echo "==> building fuzz targets"
cargo fuzz build "${FLAGS[@]}"

failed=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t" target/logs
  log=target/logs/$t.log
  echo "==> fuzzing $t for ${SECS}s"
  if cargo fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" \
      | sed 's/^/    /' || true
    grep -E '^#[0-9]+\s+DONE' "$log" | sed 's/^/    /' || true
  else
    failed+=("$t")
    echo "!!! $t crashed or failed; last lines of $log:"
    tail -n 60 "$log"
    ls -1 "artifacts/$t"/{crash,leak,timeout,oom}-* 2>/dev/null | sed 's/^/    input: fuzz\//' || true
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (reproduce in fuzz/: RUSTC_BOOTSTRAP=1 $ROOT/.tools/bin/cargo-fuzz run ${FLAGS[*]} <target> artifacts/<target>/crash-...)"
  exit 1
fi
echo "fuzz: all targets ran ${SECS}s without a crash: $targets" | tr '\n' ' '
echo
