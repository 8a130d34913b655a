#!/usr/bin/env bash
# Builds and runs Arrow's libFuzzer targets on stable Rust (no cargo-fuzz,
# no nightly): libfuzzer-sys compiles libFuzzer with the system C++ compiler,
# and rustc instruments the code with its stable `-C passes=sancov-module`
# flags (inline 8-bit counters, PC table, comparison tracing).
#
#   fuzz/run.sh build                 build every target
#   fuzz/run.sh smoke [SECONDS]       replay each corpus, then fuzz each target
#                                     SECONDS (default 20) — what CI runs
#   fuzz/run.sh run TARGET [ARGS…]    fuzz one target (libFuzzer flags, e.g.
#                                     -runs=10000000 -jobs=1); new inputs go to
#                                     a scratch corpus, not the committed one;
#                                     -jobs logs to target/fuzz/logs/TARGET
#   fuzz/run.sh list                  the targets
#
# Environment: ARROW_FUZZ_TARGET_DIR (default target/fuzz under the repo).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${ARROW_FUZZ_TARGET_DIR:-$ROOT/../target/fuzz}
BIN=$CARGO_TARGET_DIR/$TRIPLE/release
TARGETS=(http_request snapshot_state notify_device vsock_queues virtio_mmio image_import pmem_queue mem_queue app_spec)

log() { echo "fuzz: $*" >&2; }
fail() { log "error: $*"; exit 1; }

need_cxx() {
    command -v c++ >/dev/null && return
    log "installing g++ (libFuzzer is C++)"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2 || fail "apt-get update failed"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends g++ >&2 || fail "apt-get install g++ failed"
}

build() {
    need_cxx
    # --target keeps the instrumentation off build scripts and proc macros.
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions" \
        cargo build --release --target "$TRIPLE" --bins >&2
}

run_one() {
    local t=$1; shift
    local scratch=$CARGO_TARGET_DIR/corpus/$t logs=$CARGO_TARGET_DIR/logs/$t
    mkdir -p "$scratch" "$logs" "$CARGO_TARGET_DIR/artifacts/$t"
    # A device loop that spins on guest input is a bug like a crash: 10 s per
    # input is far beyond any legitimate one. libFuzzer writes -jobs logs
    # (fuzz-N.log) to its working directory: keep them out of the repo.
    (cd "$logs" && exec "$BIN/$t" -artifact_prefix="$CARGO_TARGET_DIR/artifacts/$t/" \
        -rss_limit_mb=2048 -timeout=10 -max_len=65536 "$@" "$scratch" "$ROOT/corpus/$t")
}

case ${1:-} in
    build) build ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    smoke)
        secs=${2:-20}
        build
        for t in "${TARGETS[@]}"; do
            log "$t: replay $(find "corpus/$t" -type f | wc -l) corpus inputs"
            "$BIN/$t" -runs=0 -timeout=10 "corpus/$t" 2>&1 | tail -n 2 >&2
            rm -rf "$CARGO_TARGET_DIR/artifacts/$t"
            log "$t: fuzz ${secs}s"
            run_one "$t" -max_total_time="$secs" -print_final_stats=1 2>&1 \
                | grep -E '^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|.*(crash|panicked|timeout))' >&2 \
                || true
            # libFuzzer exits non-zero on a finding; its file is the verdict.
            if compgen -G "$CARGO_TARGET_DIR/artifacts/$t/*" >/dev/null; then
                fail "$t crashed: $(ls "$CARGO_TARGET_DIR/artifacts/$t/")"
            fi
        done
        log "all targets ran without crashes"
        ;;
    run)
        t=${2:?usage: fuzz/run.sh run TARGET [libFuzzer args]}
        shift 2
        [[ -x $BIN/$t ]] || build
        run_one "$t" "$@"
        ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
