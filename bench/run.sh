#!/usr/bin/env bash
# pgwarden benchmark: see bench/RESULTS.md. All the work is in run.py (Python 3;
# the standard library, plus matplotlib for the plot and confluent-kafka for the Kafka target).
#   bench/run.sh [--matrix] [--rounds 3] [--seconds 10] [--quick] [--clients 1,8] [--targets ...] [--help]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_PROG="${BENCH_PROG:-$0}"
# The venv of scripts/install-deps.sh has both.
py=python3
[ -x "$here/../.venv/bin/python" ] && py="$here/../.venv/bin/python"
exec "$py" "$here/run.py" "$@"
