#!/usr/bin/env bash
# Install what a fresh machine lacks (idempotent): Debian packages, uv, the Python
# environment, and the Kafka broker's jars from Maven Central.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if (( ${#need_apt[@]} )); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1; then
  log "installing uv from PyPI"
  python3 -m pip install -q uv
  hash -r
  command -v uv >/dev/null 2>&1 || pyenv rehash 2>/dev/null || true
fi

log "uv sync (Python environment in .venv)"
(cd "$REPO" && uv sync --all-packages -q)

libs="$LOCAL/kafka/libs"
if [[ -z "$(ls -A "$libs" 2>/dev/null)" ]]; then
  log "resolving Apache Kafka jars from Maven Central"
  mkdir -p "$libs"
  mvn -q -B -f "$REPO/deploy/local/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
fi
