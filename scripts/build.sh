#!/usr/bin/env bash
# Configures and builds pgwarden into build/ with warnings as errors.
# BUILD_TYPE overrides the build type; extra arguments go to cmake's configure
# step (e.g. bash scripts/build.sh -DPGW_ASAN=ON).
set -euo pipefail

cd "$(dirname "$0")/.."
cmake -S . -B build -DPGW_WERROR=ON -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@"
cmake --build build -j "$(nproc)"
