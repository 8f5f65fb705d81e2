#!/usr/bin/env bash
# Runs every fuzz target (fuzz/) for SECONDS each (default 10), from its committed seeds plus
# the corpus earlier runs grew (kept in the cache, outside the clone). A crash or a broken
# invariant fails the run and leaves the input in fuzz/artifacts/<target>/.
#
# cargo-fuzz needs the nightly-only flags of libFuzzer's instrumentation; RUSTC_BOOTSTRAP=1 lets
# the machine's one stable toolchain accept them, so no nightly is needed. -s none: the agent
# has no unsafe code, so a sanitizer would only double the build (fuzz/README.md).
#
# FUZZ_PROFILE=dev (default): unoptimized, for the short run in CI: the agent's crate rebuilds in
# ~15 s, where the optimized instrumented build takes ~11 min on 2 cores (and a fresh clone at
# another path always rebuilds it). FUZZ_PROFILE=release for long runs: several times the speed.
#
# libfuzzer-sys compiles libFuzzer itself, which is C++, through the cc crate:
# needs-command: c++
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-10}
CACHE="${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}"
FUZZ_VERSION=0.13.2
export CARGO_TARGET_DIR="$CACHE/fuzz-target" RUSTC_BOOTSTRAP=1
case "${FUZZ_PROFILE:-dev}" in
  dev) profile=--dev ;;
  release) profile=--release ;;
  *) echo "fuzz: FUZZ_PROFILE must be dev or release, not '$FUZZ_PROFILE'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version 2>/dev/null | grep -q " $FUZZ_VERSION\$"; then
  echo "fuzz: cargo install cargo-fuzz@$FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$FUZZ_VERSION"
fi
echo "fuzz: building the targets ($profile; the first build takes ~6 min on 2 cores, ~15 with --release; later ones reuse $CARGO_TARGET_DIR)"
cargo fuzz build "$profile" -s none
for target in $(cargo fuzz list); do
  corpus="$CACHE/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  log="$CACHE/fuzz-$target.log"
  rc=0
  cargo fuzz run "$profile" -s none "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)" "$log" | tr '\n' ' ' || true
  echo
  if [ "$rc" != 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $target FAILED (exit $rc): the input is in fuzz/artifacts/$target/, the log above" >&2
    exit 1
  fi
done
echo "fuzz: every target ran ${SECONDS_EACH}s with no crash"
