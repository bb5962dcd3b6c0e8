#!/usr/bin/env bash
# Fuzzes every libFuzzer target for SECONDS each (default 30), one after the
# other, each on a scratch copy of its checked-in corpus (tests/fuzz/corpus/)
# so that new inputs never land among the seeds. Builds build-fuzz/ first
# (clang, -DPGW_FUZZ=ON). Prints one line per target: runs, coverage
# (cov = edges, ft = features), corpus size, crashes. Crashing inputs are
# kept in build-fuzz/fuzz-artifacts/<target>/; the exit status is non-zero
# if any target crashed, leaked or timed out.
#
#   bash scripts/fuzz.sh               # 30 s per target
#   bash scripts/fuzz.sh 3600          # an hour each (see tests/fuzz/README.md)
#   FUZZ_TARGETS="fuzz_session fuzz_http" bash scripts/fuzz.sh 120
#   FUZZ_KEEP=1 ...                    # keep the grown corpora in build-fuzz/fuzz-work/
#                                      # and start from them next time
set -uo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-30}"
targets="${FUZZ_TARGETS:-fuzz_framer_frontend fuzz_framer_backend fuzz_startup fuzz_analysis fuzz_event_encode fuzz_http fuzz_config_args fuzz_session fuzz_policy fuzz_spool}"

mkdir -p build-fuzz
CC=clang cmake -B build-fuzz -DPGW_FUZZ=ON -DPGW_TESTS=ON -DPGW_WERROR=ON > build-fuzz/fuzz-build.log 2>&1 &&
    cmake --build build-fuzz -j"$(nproc)" >> build-fuzz/fuzz-build.log 2>&1 ||
    { tail -50 build-fuzz/fuzz-build.log; echo "fuzz.sh: build failed" >&2; exit 1; }

work="build-fuzz/fuzz-work"
arts="build-fuzz/fuzz-artifacts"
failed=0
for t in $targets; do
    rm -rf "$arts/$t"
    [ -n "${FUZZ_KEEP:-}" ] || rm -rf "$work/$t"
    mkdir -p "$work/$t" "$arts/$t"
    cp tests/fuzz/corpus/"$t"/* "$work/$t"/ 2>/dev/null
    log="$work/$t.log"
    # -timeout: one input taking this long is a hang; -rss_limit_mb: a leak
    # or an unbounded buffer.
    build-fuzz/tests/fuzz/"$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$arts/$t/" "$work/$t" > "$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
    corp=$(echo "$last" | grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' | cut -d' ' -f2)
    crashes=$(find "$arts/$t" -type f | wc -l)
    printf 'fuzz %-22s %5ss runs %-9s cov %-6s ft %-7s corpus %-10s crashes %s%s\n' \
        "$t" "$seconds" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" \
        "$([ "$rc" -ne 0 ] && echo " (exit $rc: see $log)")"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/    /'
    fi
    [ -n "${FUZZ_KEEP:-}" ] || rm -rf "$work/$t"
done
exit "$failed"
