#!/usr/bin/env bash
# The tools tests/test_helm.py needs to check the chart without a cluster (idempotent,
# non-interactive; prints what it does; fails loudly):
#   - helm, built from the Go module proxy into .local/bin/helm
#   - KEDA's ScaledObject CRD (from the KEDA Go module), its openAPIV3Schema converted to a
#     JSON Schema in .local/helm-tools/keda-<version>/scaledobject.json
# The Kubernetes schemas come from the PyPI package kubernetes-validate (the dev group in
# pyproject.toml; `uv sync` installs it).
# Needs Go 1.21 or newer (helm 3.22 builds with Go 1.26: an older go fetches that toolchain
# through the Go module proxy by itself; Debian 12's golang-go, 1.19, is too old) and the
# repo's .venv (deploy/local/install.sh builds it).
#   bash deploy/helm/install-tools.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="$REPO/.local"
HELM_VERSION="${TENANTRY_HELM_VERSION:-v3.22.0}"
KEDA_VERSION="${TENANTRY_KEDA_VERSION:-v2.21.0}"

log() { printf '[install-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Go's caches live under .local/go (gitignored), writable so that `make clean` can remove them.
export GOPATH="$LOCAL/go" GOMODCACHE="$LOCAL/go/mod" GOCACHE="$LOCAL/go/cache"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw" GO111MODULE=on
export GOBIN="$LOCAL/bin"
mkdir -p "$GOBIN" "$LOCAL/helm-tools"

GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "$GO" ]] || die "Go is not installed (need Go >= 1.21 to build helm $HELM_VERSION)"

# ------------------------------------------------------------------ helm
have_helm_version() { "$GOBIN/helm" version --template '{{.Version}}' 2>/dev/null || true; }
if [[ "$(have_helm_version)" == "$HELM_VERSION" ]]; then
  log "helm $HELM_VERSION: already in $GOBIN/helm"
else
  log "building helm $HELM_VERSION with $("$GO" version) into $GOBIN (first time: a few minutes)"
  # -ldflags: the version `helm version` reports (otherwise it says the module default).
  CGO_ENABLED=0 "$GO" install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
  [[ "$(have_helm_version)" == "$HELM_VERSION" ]] \
    || die "$GOBIN/helm reports '$(have_helm_version)', expected $HELM_VERSION"
  log "helm $HELM_VERSION installed: $GOBIN/helm (dropping Go's build cache, ~700 MB)"
  "$GO" clean -cache || log "go clean -cache failed (harmless: $GOCACHE can be removed by hand)"
fi

# ------------------------------------------------------------------ KEDA ScaledObject schema
keda_dir="$LOCAL/helm-tools/keda-$KEDA_VERSION"
schema="$keda_dir/scaledobject.json"
if [[ -s "$schema" ]]; then
  log "KEDA $KEDA_VERSION ScaledObject schema: already at $schema"
else
  log "downloading the KEDA Go module $KEDA_VERSION (for its CRDs)"
  json="$("$GO" mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION")" \
    || die "go mod download github.com/kedacore/keda/v2@$KEDA_VERSION failed: $json"
  module_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json" | head -n 1)"
  crd="$module_dir/config/crd/bases/keda.sh_scaledobjects.yaml"
  [[ -f "$crd" ]] || die "no $crd in the KEDA module (did its layout change?)"
  python="$REPO/.venv/bin/python"
  [[ -x "$python" ]] || die "$python is missing: run deploy/local/install.sh (uv sync) first"
  mkdir -p "$keda_dir"
  cp "$crd" "$keda_dir/keda.sh_scaledobjects.yaml"
  "$python" "$REPO/deploy/helm/crd_schema.py" "$crd" "$schema.partial" \
    || die "converting $crd to a JSON Schema failed"
  mv "$schema.partial" "$schema"
  log "KEDA $KEDA_VERSION ScaledObject schema: $schema"
fi
