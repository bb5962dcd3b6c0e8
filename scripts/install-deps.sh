#!/usr/bin/env bash
# Installs everything pgwarden needs to build and test on Debian 12, then the
# Python venv for the integration tests (.venv/ at the repository root).
# Idempotent: a second run with everything present touches neither apt nor pip.
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# libclang-rt-14-dev: clang's sanitizer and libFuzzer runtimes (only a
# Recommends of clang), for -DPGW_FUZZ=ON and CC=clang sanitizer builds.
PACKAGES=(
    build-essential cmake pkg-config clang libclang-rt-14-dev
    libuv1-dev libssl-dev openssl libpg-query-dev libprotobuf-c-dev librdkafka-dev zlib1g-dev
    libinih-dev libhttp-parser-dev libxxhash-dev libjson-c-dev
    postgresql-15 postgresql-client-15 postgresql-contrib postgresql-15-pgaudit pgbouncer
    python3-pip python3-venv
    openjdk-17-jdk-headless maven
    valgrind
)
# promtool and a real server for the metrics tests; without its Recommends
# (exporters that would start as services).
NORECOMMENDS=(prometheus)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo DEBIAN_FRONTEND=noninteractive "$@"
    else
        echo "install-deps: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}
missing=() missing_norec=()
for pkg in "${PACKAGES[@]}"; do is_installed "$pkg" || missing+=("$pkg"); done
for pkg in "${NORECOMMENDS[@]}"; do is_installed "$pkg" || missing_norec+=("$pkg"); done

if [ ${#missing[@]} -gt 0 ] || [ ${#missing_norec[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]} ${missing_norec[*]}"
    as_root apt-get update -q
    [ ${#missing[@]} -eq 0 ] || as_root apt-get install -y -q "${missing[@]}"
    [ ${#missing_norec[@]} -eq 0 ] || as_root apt-get install -y -q --no-install-recommends "${missing_norec[@]}"
else
    echo "install-deps: Debian packages already installed"
fi

# The Python side: Debian's interpreter (python3-venv is installed above), so
# the venv does not depend on whatever other Python happens to be on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
# tests/requirements.txt for the integration tests, bench/requirements.txt for
# the benchmark's plot; the stamp covers both.
REQS=(tests/requirements.txt bench/requirements.txt)
stamp=.venv/.requirements.sha256
want=$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "install-deps: installing Python packages from ${REQS[*]} into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check "${REQS[@]/#/-r}"
    echo "$want" > "$stamp"
else
    echo "install-deps: .venv up to date"
fi

# The JDBC driver for the JDBC integration test, from Maven Central into the
# local Maven repository (~/.m2), once.
PGJDBC=org.postgresql:postgresql:42.7.14
jar="$HOME/.m2/repository/org/postgresql/postgresql/42.7.14/postgresql-42.7.14.jar"
if [ ! -f "$jar" ]; then
    echo "install-deps: fetching $PGJDBC with Maven"
    mvn -q -B dependency:get -Dartifact="$PGJDBC" -Dtransitive=false
fi

# node-postgres for its integration test (tests/integration/node), from the
# npm registry with the machine's Node.js (Debian's nodejs and npm when
# there is none), once per package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing nodejs npm"
    as_root apt-get update -q
    as_root apt-get install -y -q nodejs npm
fi
NODE_DIR=tests/integration/node
nstamp="$NODE_DIR/node_modules/.pgwarden-lock.sha256"
nwant=$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$nstamp" 2>/dev/null)" != "$nwant" ]; then
    echo "install-deps: installing node-postgres with npm ci"
    npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error
    echo "$nwant" > "$nstamp"
else
    echo "install-deps: node-postgres up to date"
fi

# Apache Kafka's broker jars (tests/integration/kafka/pom.xml) for the Kafka
# tests' real broker, from Maven Central into ~/.m2, once. (The tests resolve
# the classpath offline, and fetch what is missing themselves.)
KPOM=tests/integration/kafka/pom.xml
kver=$(sed -n 's:.*<version>\(3[^<]*\)</version>.*:\1:p' "$KPOM" | head -1)
kjar="$HOME/.m2/repository/org/apache/kafka/kafka_2.13/$kver/kafka_2.13-$kver.jar"
cjar="$HOME/.m2/repository/org/apache/kafka/kafka-clients/$kver/kafka-clients-$kver.jar"
if [ ! -f "$kjar" ] || [ ! -f "$cjar" ]; then
    echo "install-deps: fetching Apache Kafka $kver's jars with Maven"
    mvn -q -B -f "$KPOM" dependency:resolve
fi
