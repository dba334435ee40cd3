#!/usr/bin/env bash
# Install what a fresh machine lacks (idempotent, non-interactive): Debian packages, uv,
# the Python environment (.venv with every workspace member), and the Kafka broker's jars
# from Maven Central (.local/kafka/libs).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ------------------------------------------------------------------ Debian packages
need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# SSO tests: the xmlsec1 binary signs for the test IdP (pysaml2), Debian's chromium is the
# browser Playwright drives (never a browser a tool downloads), npm installs the test OIDC
# provider (oidc-provider).
command -v xmlsec1 >/dev/null 2>&1 || need_apt+=(xmlsec1)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# tenancy's DPA as PDF: WeasyPrint lays text out with Pango (and needs a font).
ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' || need_apt+=(libpango-1.0-0 libpangoft2-1.0-0)
ls /usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if (( ${#need_apt[@]} )); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# (Debian's postgresql package also sets up a cluster of its own on port 5432; ours lives
# in .local/pg on its own port, so the two never meet.)

# ------------------------------------------------------------------ uv
if ! type -P uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
  log "installing uv from PyPI"
  python3 -m pip install -q --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages uv
  hash -r
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash 2>/dev/null || true; fi
fi

# ------------------------------------------------------------------ Python environment
# The root project is virtual and depends on every member; --all-packages says so anyway.
log "uv sync (Python environment in .venv)"
# Without SSL_CERT_FILE, let uv trust the system's CA store (as pip and curl do here).
if [[ -z "${SSL_CERT_FILE:-}" && -z "${UV_NATIVE_TLS:-}" ]]; then export UV_NATIVE_TLS=1; fi
(cd "$REPO" && uv sync --all-packages --quiet)

# ------------------------------------------------------------------ chart tooling
# helm (from the Go module proxy) and the KEDA CRD schema, for tests/test_helm.py; cached
# in .local/ (the first run builds helm: a few minutes).
bash "$REPO/deploy/helm/install-tools.sh"

# ------------------------------------------------------------------ Kafka jars
# Resolved into a scratch folder and moved into place only when complete; resolved again
# when deploy/local/kafka/pom.xml changes (its hash is kept beside the jars), but never
# under a running broker.
libs="$LOCAL/kafka/libs"
pom="$REPO/deploy/local/kafka/pom.xml"
pom_hash="$(sha256sum "$pom" | cut -d' ' -f1)"
have_jars() { [[ -n "$(ls -A "$libs" 2>/dev/null)" ]]; }
jars_current() { [[ "$(cat "$LOCAL/kafka/libs.pom.sha256" 2>/dev/null)" == "$pom_hash" ]]; }
if have_jars && ! jars_current && pid_alive "$LOCAL/run/kafka.pid"; then
  log "kafka/pom.xml changed: its jars are resolved again once the broker is stopped (make down; make up)"
elif ! have_jars || ! jars_current; then
  log "resolving the Apache Kafka broker's jars from Maven Central"
  mkdir -p "$LOCAL/kafka"
  rm -rf "$libs.partial"
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs.partial" -DincludeScope=runtime >"$LOCAL/kafka/mvn.log" 2>&1 \
    || { tail -n 40 "$LOCAL/kafka/mvn.log" >&2; die "maven could not resolve the Kafka jars"; }
  [[ -n "$(ls -A "$libs.partial" 2>/dev/null)" ]] || die "maven resolved no jars"
  rm -rf "$libs"
  mv "$libs.partial" "$libs"
  echo "$pom_hash" > "$LOCAL/kafka/libs.pom.sha256"
  log "$(ls "$libs" | wc -l) jars in $libs"
fi

# ------------------------------------------------------------------ test peers (npm)
# The certified OpenID provider our OIDC tests sign in against; npm ci from its lockfile.
peer="$REPO/tests/peers/oidc-provider"
if [[ -f "$peer/package-lock.json" ]]; then
  lock_hash="$(sha256sum "$peer/package-lock.json" | cut -d' ' -f1)"
  if [[ ! -d "$peer/node_modules" || "$(cat "$peer/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_hash" ]]; then
    log "npm ci (tests/peers/oidc-provider)"
    (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || die "npm ci failed in tests/peers/oidc-provider"
    echo "$lock_hash" > "$peer/node_modules/.lock.sha256"
  fi
fi

# ------------------------------------------------------------------ S3 server for tests
# SeaweedFS (deploy/local/seaweedfs.sh), the real S3 server the object-storage tests start
# a fresh copy of. Built from the Go module proxy into ~/.cache/tenantry (shared by every
# clone on the machine, CI's included): a warm install checks the binary in 0.35 s. A cold
# build (measured with the modules already downloaded) takes ~560 s of CPU and up to 2.2 GB
# of RAM (33 min wall at low priority on this 2-core machine under load; idle: not
# measured); the very first one also downloads ~2.1 GB of Go modules. So it is the last
# step: all else is in place if it fails. It runs in the foreground: beside the test suite
# it would take a core from timing-sensitive tests.
bash "$REPO/deploy/local/seaweedfs.sh" install >/dev/null
