#!/usr/bin/env bash
# pgwarden benchmark: see bench/RESULTS.md. All the work is in run.py (Python 3, stdlib only).
#   bench/run.sh [--rounds 3] [--seconds 10] [--quick] [--targets ...] [--help]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_PROG="${BENCH_PROG:-$0}"
# The Kafka target needs confluent-kafka: the venv of scripts/install-deps.sh has it.
py=python3
[ -x "$here/../.venv/bin/python" ] && py="$here/../.venv/bin/python"
exec "$py" "$here/run.py" "$@"
