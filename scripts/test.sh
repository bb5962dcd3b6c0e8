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

if [ "$pytest_rc" -ne 0 ]; then
    exit "$pytest_rc"
fi
exit "$ctest_rc"
