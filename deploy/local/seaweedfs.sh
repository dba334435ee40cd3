#!/usr/bin/env bash
# A real S3-compatible server for tests of the object-storage path (export archives):
# SeaweedFS's `weed mini` (master, volume, filer and S3 gateway in one process), built from
# the Go module proxy and cached outside the clone, so that CI on the same machine builds
# it once.
#   seaweedfs.sh install            build weed into the cache if missing; prints its path
#   seaweedfs.sh start DATA_DIR PORT   S3 on http://127.0.0.1:PORT, data in DATA_DIR
#   seaweedfs.sh stop               stop the one of this run directory (below)
#   seaweedfs.sh status             up or down, and where
#   seaweedfs.sh env                the endpoint and credentials as KEY=VALUE lines
# The server takes ten ports, PORT to PORT+9 (S3 and its gRPC, master, volume, filer and
# the admin server, each with its gRPC port), all on 127.0.0.1 only; each is named on the
# command line, so a port that is taken makes start fail instead of moving elsewhere.
# Credentials: TENANTRY_S3_ACCESS_KEY / TENANTRY_S3_SECRET_KEY (local defaults below); the
# key is an admin identity of the server. One server per run directory: its pid and state
# files live in TENANTRY_SEAWEEDFS_RUN_DIR (default .local/run), so a test run that sets
# its own (tenantry_testkit.seaweedfs does) never meets a developer's server or another
# run's; the data directory is the caller's (a temp dir per test run).
#
# Measured on the 2-core machine (version below): a cold build takes ~535 s of CPU
# (22 min wall while the machine was loaded); it downloads ~2.1 GB of modules (kept in
# the cache's go/mod) and fills ~1.8 GB of build cache (dropped afterwards); the binary
# (-trimpath, reproducible) is ~157 MiB; start to the S3 port answering ~4-5 s; RSS
# ~140 MB idle, ~270-300 MB after a 19 MiB multipart upload; SIGTERM stops it in ~2-3 s.
# Each bucket gets volume files of its own and deleted data stays on disk until a vacuum:
# give each test run a fresh data directory.
#
# Client notes (botocore/aiobotocore): use path-style addressing and
# signature_version="s3v4"; without the latter botocore presigns SigV2 URLs in us-east-1,
# which this server accepts only without response-* overrides. A presigned URL is bound to
# the host it was signed for (127.0.0.1 vs localhost is a 403). The server accepts any
# region name in the signature, so a wrong region is not caught here.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SEAWEEDFS_MODULE="github.com/seaweedfs/seaweedfs"
# A pseudo-version: SeaweedFS's tags are not Go-module versions; this one is what the Go
# module proxy serves here (weed reports "30GB 4.53 7506e5f91cd6").
SEAWEEDFS_VERSION="${TENANTRY_SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
TOOL_CACHE="${TENANTRY_TOOL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/tenantry}"
WEED="$TOOL_CACHE/seaweedfs/$SEAWEEDFS_VERSION/weed"
S3_ACCESS_KEY="${TENANTRY_S3_ACCESS_KEY:-tenantry-local}"
S3_SECRET_KEY="${TENANTRY_S3_SECRET_KEY:-tenantry-local-s3-secret}"
S3_REGION="${TENANTRY_S3_REGION:-us-east-1}"
SW_RUN="${TENANTRY_SEAWEEDFS_RUN_DIR:-$LOCAL/run}"
SW_PID="$SW_RUN/seaweedfs.pid"
SW_STATE="$SW_RUN/seaweedfs.state"  # DATA_DIR and PORT of the running server

# The commit weed reports: the pseudo-version's last part, or the version itself.
sw_commit() {
  if [[ "$SEAWEEDFS_VERSION" =~ -([0-9a-f]{12})$ ]]; then echo "${BASH_REMATCH[1]}"
  else echo "$SEAWEEDFS_VERSION"; fi
}
have_weed() { [[ -x "$WEED" ]] && "$WEED" version 2>/dev/null | grep -qF " $(sw_commit) "; }

# ------------------------------------------------------------------ install
sw_install() {
  if have_weed; then
    log "seaweedfs $SEAWEEDFS_VERSION: already in $WEED"
    echo "$WEED"; return 0
  fi
  local GO; GO="$(command -v go || true)"
  [[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
  [[ -n "$GO" ]] || die "Go is not installed (SeaweedFS $SEAWEEDFS_VERSION needs Go >= 1.26)"
  mkdir -p "$TOOL_CACHE/seaweedfs/$SEAWEEDFS_VERSION"
  # One build at a time on this machine (a developer's make and CI may run together).
  exec 9>"$TOOL_CACHE/seaweedfs/.install.lock"
  flock 9
  if have_weed; then flock -u 9; echo "$WEED"; return 0; fi
  (
    # Go's caches for tool builds, shared by every clone on the machine.
    export GOPATH="$TOOL_CACHE/go" GOMODCACHE="$TOOL_CACHE/go/mod" GOCACHE="$TOOL_CACHE/go/cache"
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw" GO111MODULE=on CGO_ENABLED=0
    log "downloading $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION from the Go module proxy"
    json="$("$GO" mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION")" \
      || die "go mod download $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION failed: $json"
    dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json" | head -n 1)"
    [[ -f "$dir/weed/weed.go" ]] || die "no weed/weed.go in $dir (did the module's layout change?)"
    # `go install module/weed@version` refuses: SeaweedFS's go.mod has replace directives.
    # So build inside the downloaded module, as its main module (its go.sum is complete).
    log "building weed with $("$GO" version) (first time: 5-20 minutes, ~4 GB of caches)"
    local_start=$SECONDS
    "$GO" build -C "$dir" -trimpath \
      -ldflags "-s -w -X $SEAWEEDFS_MODULE/weed/util/version.COMMIT=$(sw_commit)" \
      -o "$WEED.partial" ./weed || die "go build of $SEAWEEDFS_MODULE/weed@$SEAWEEDFS_VERSION failed"
    mv "$WEED.partial" "$WEED"
    log "built in $(( SECONDS - local_start )) s: $WEED ($(du -m "$WEED" | cut -f1) MB); dropping Go's build cache"
    "$GO" clean -cache || log "go clean -cache failed (harmless: $GOCACHE can be removed by hand)"
  ) || { rm -f "$WEED.partial"; flock -u 9; exit 1; }
  flock -u 9
  have_weed || die "$WEED does not report commit $(sw_commit): $("$WEED" version 2>&1 | head -n 1)"
  echo "$WEED"
}

# ------------------------------------------------------------------ start / stop
sw_alive() { pid_alive "$SW_PID"; }  # running and not a zombie (common.sh)

sw_ready() {  # the S3 gateway answers HTTP (403 to an anonymous request)
  local code
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true)"
  [[ "$code" =~ ^[2-4][0-9][0-9]$ ]]
}

sw_start() {
  local data="${1:-}" port="${2:-}"
  [[ -n "$data" && "$port" =~ ^[0-9]+$ ]] || die "usage: seaweedfs.sh start DATA_DIR PORT"
  (( port >= 1024 && port + 9 <= 65535 )) || die "PORT must leave room for PORT..PORT+9 (1024-65526)"
  have_weed || die "weed $SEAWEEDFS_VERSION is not built in $WEED: run deploy/local/install.sh (or deploy/local/seaweedfs.sh install)"
  mkdir -p "$data" "$SW_RUN"
  data="$(cd "$data" && pwd)"
  if sw_alive; then
    if [[ "$(cat "$SW_STATE" 2>/dev/null)" == "$data $port" ]] && sw_ready "$port"; then return 0; fi
    die "seaweedfs already runs for $SW_RUN ($(cat "$SW_STATE" 2>/dev/null)): stop it first"
  fi
  local p
  for (( p = port; p <= port + 9; p++ )); do
    if port_open "$p"; then
      die "seaweedfs: 127.0.0.1:$p is taken (it needs $port..$((port + 9))): choose another PORT"
    fi
  done
  log "starting seaweedfs on http://127.0.0.1:$port (data in $data)"
  # -logtostderr: glog would otherwise write its files into /tmp. Telemetry off (it would
  # post to the project's server), no WebDAV, admin UI, Iceberg or Lance listeners, and no
  # bucket made on the fly by a PUT (S3 answers NoSuchBucket, as AWS does).
  AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    setsid nohup "$WEED" -logtostderr=true mini -dir="$data" \
      -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$port" -s3.port.grpc=$((port + 1)) \
      -master.port=$((port + 2)) -master.port.grpc=$((port + 3)) \
      -volume.port=$((port + 4)) -volume.port.grpc=$((port + 5)) \
      -filer.port=$((port + 6)) -filer.port.grpc=$((port + 7)) \
      -admin.port=$((port + 8)) -admin.port.grpc=$((port + 9)) -admin.port.legacy=0 \
      -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
      -master.telemetry=false -s3.autoCreateBucket=false \
      >"$data/weed.log" 2>&1 </dev/null &
  echo $! > "$SW_PID"
  echo "$data $port" > "$SW_STATE"
  if ! wait_for "seaweedfs S3 on 127.0.0.1:$port" 60 sw_ready "$port"; then
    tail -n 30 "$data/weed.log" >&2
    stop_pid "$SW_PID" 10; rm -f "$SW_STATE"
    return 1
  fi
  sw_alive || { tail -n 30 "$data/weed.log" >&2; die "seaweedfs exited during start"; }
}

sw_stop() {
  if sw_alive; then
    log "stopping seaweedfs"
    local pid; pid="$(cat "$SW_PID")"
    signal_tree TERM "$pid"  # a clean stop takes ~3 s
    local deadline=$(( SECONDS + 15 ))
    while sw_alive && (( SECONDS < deadline )); do sleep 0.1; done
    if sw_alive; then log "seaweedfs ignored SIGTERM for 15 s: SIGKILL"; signal_tree KILL "$pid"; sleep 0.5; fi
  fi
  rm -f "$SW_PID"
  rm -f "$SW_STATE"
}

sw_status() {
  local data port
  if sw_alive && read -r data port < "$SW_STATE" 2>/dev/null && sw_ready "$port"; then
    echo "seaweedfs: up on http://127.0.0.1:$port (data in $data)"
  else echo "seaweedfs: down"; return 1; fi
}

sw_env() {
  local data port
  read -r data port < "$SW_STATE" 2>/dev/null || die "seaweedfs is not running (no $SW_STATE)"
  printf 'TENANTRY_S3_ENDPOINT=http://127.0.0.1:%s\nTENANTRY_S3_REGION=%s\n' "$port" "$S3_REGION"
  printf 'TENANTRY_S3_ACCESS_KEY=%s\nTENANTRY_S3_SECRET_KEY=%s\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
}

case "${1:-}" in
  install) sw_install ;;
  start) shift; sw_start "$@" ;;
  stop) sw_stop ;;
  status) sw_status ;;
  env) sw_env ;;
  *) die "usage: seaweedfs.sh {install|start DATA_DIR PORT|stop|status|env}" ;;
esac
