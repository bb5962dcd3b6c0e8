#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, build, the C unit tests
# (ctest), then the integration tests (pytest, against a PostgreSQL 15 cluster
# and pgwarden instances that the tests start themselves).
# Extra arguments are passed to pytest (e.g. -k cancel, -x).
# The last line printed is pytest's summary; the exit status is non-zero if
# anything failed.
set -uo pipefail

cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || { echo "test.sh: installing dependencies failed" >&2; exit 1; }
bash scripts/build.sh || { echo "test.sh: build failed" >&2; exit 1; }

ctest --test-dir build --output-on-failure
ctest_rc=$?
if [ "$ctest_rc" -ne 0 ]; then
    echo "test.sh: ctest failed (exit $ctest_rc); running the integration tests anyway"
fi

.venv/bin/python -m pytest tests/integration "$@"
pytest_rc=$?

# The same suites once more on an AddressSanitizer + UBSan build (any report
# aborts the process, so the tests see it). Its pytest summary ends the output.
echo "test.sh: sanitizer build (build-asan/)"
cmake -B build-asan -DPGW_ASAN=ON -DPGW_WERROR=ON > /dev/null &&
    cmake --build build-asan -j"$(nproc)" > build-asan.log 2>&1 ||
    { tail -50 build-asan.log; echo "test.sh: sanitizer build failed" >&2; exit 1; }
ctest --test-dir build-asan --output-on-failure
asan_ctest_rc=$?
PGW_BINARY="$PWD/build-asan/pgwarden" PGW_SANITIZED=1 .venv/bin/python -m pytest tests/integration "$@"
asan_pytest_rc=$?

for rc in "$ctest_rc" "$pytest_rc" "$asan_ctest_rc" "$asan_pytest_rc"; do
    [ "$rc" -ne 0 ] && exit "$rc"
done
exit 0
