#!/usr/bin/env bash
# Bounded fuzzing smoke run (docs/reliability.md, "Fuzzing"): builds every target and
# runs each for SECONDS (default 25) from the committed seed corpus; fails on any crash,
# panic, timeout or out-of-memory. Works on the stable toolchain (`-s none`: no sanitizer,
# which needs nightly; the targets are safe Rust, and debug assertions and overflow
# checks stay on). New inputs go to a scratch copy; the committed corpus is not changed.
#
#   fuzz/smoke.sh                # every target, 25 s each
#   fuzz/smoke.sh 300 sql jwt    # 5 minutes each for two targets (a "long run")
#   KEEP=1 fuzz/smoke.sh ...     # keep the grown corpus in fuzz/target/smoke-corpus/
#   FUZZ_DEV=1 fuzz/smoke.sh 8   # unoptimized build (CI: about half the build time;
#                                # fewer executions per second, enough for a smoke)
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-25}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

dict_for() {
    case "$1" in
        sql) echo dict/sql.dict ;;
        config) echo dict/config.dict ;;
        jwt | jwks) echo dict/json.dict ;;
        *) echo "" ;;
    esac
}

profile=()
[ -n "${FUZZ_DEV:-}" ] && profile=(--dev)

start=$(date +%s)
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo fuzz build -s none "${profile[@]}"
echo "fuzz build: $(( $(date +%s) - start )) s"

work=target/smoke-corpus
mkdir -p artifacts
failed=()
for t in "${targets[@]}"; do
    rm -rf "$work/$t"
    mkdir -p "$work/$t" "artifacts/$t"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
          -artifact_prefix="artifacts/$t/")
    dict=$(dict_for "$t")
    [ -n "$dict" ] && args+=(-dict="$dict")
    log="$work/$t.log"
    echo "== $t (${seconds} s)"
    if cargo fuzz run -s none "${profile[@]}" "$t" "$work/$t" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|DONE' "$log" | tail -3
    else
        echo "FAILED: $t (log: fuzz/$log, input: fuzz/artifacts/$t/)"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' -A3 "$log" | head -20
        failed+=("$t")
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$work/$t"
done
echo "fuzz smoke: ${#targets[@]} targets, $(( $(date +%s) - start )) s in all"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz smoke FAILED: ${failed[*]}"
    exit 1
fi
