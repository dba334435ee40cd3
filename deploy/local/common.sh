# Shared by deploy/local/*.sh: repo paths and the stack settings (environment wins).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Where this stack keeps its state (data, logs, pid files, mail, objects): .local/ for the
# default stack, .local/regions/<id>/ for a region of deploy/local/regions.sh.
LOCAL="${TENANTRY_LOCAL_DIR:-$REPO/.local}"
# The Kafka broker's jars: where install.sh resolved them, shared by every region's broker
# (resolved once per checkout, never per region).
KAFKA_LIBS="$REPO/.local/kafka/libs"
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line%$'\r'}"
  [[ -z "${line//[[:space:]]/}" || "$line" == \#* || "$line" != *=* ]] && continue
  key="${line%%=*}"
  if [[ -z "${!key:-}" ]]; then export "$key=${line#*=}"; fi
done < "$REPO/deploy/local/stack.env"
# The newest PostgreSQL on the machine (empty until install.sh has installed one).
if [[ -z "${PG_BIN:-}" ]]; then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
PYTHON="$REPO/.venv/bin/python"
export PATH="$PATH:${HOME:-/root}/.local/bin"  # where `pip install --user uv` puts uv
mkdir -p "$LOCAL/log" "$LOCAL/run"

# A region's lines name it ([tenantry eu]): regions.sh starts regions side by side.
log() { printf '[tenantry%s] %s\n' "${TENANTRY_LOCAL_DIR:+ ${TENANTRY_REGION:-}}" "$*" >&2; }
die() { log "$*"; exit 1; }

# uv ARGS...: uv from PATH, else the module `pip install uv` put into python3.
uv() {
  if type -P uv >/dev/null 2>&1; then command uv "$@"; else python3 -m uv "$@"; fi
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds or the deadline passes.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then log "timed out after ${seconds}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

# pid_alive PIDFILE: its process runs and is not a zombie. After a kill -9 a process can
# linger as a zombie until the init process here reaps it (seen: several seconds), and
# kill -0 still succeeds then: a restart right after a kill must not take it for running.
pid_alive() {
  [[ -f "$1" ]] || return 1
  local pid state; pid="$(cat "$1" 2>/dev/null)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != Z ]]
}

# signal_tree SIGNAL PID: the whole process group when PID leads one (started by setsid),
# else PID alone.
signal_tree() {
  local sig="$1" pid="$2" pgid
  pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
  if [[ "$pgid" == "$pid" ]]; then kill "-$sig" -- "-$pid" 2>/dev/null || true
  else kill "-$sig" "$pid" 2>/dev/null || true; fi
}

# stop_pid PIDFILE SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pid() {
  local pidfile="$1" seconds="${2:-15}"
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid="$(cat "$pidfile")"
  signal_tree TERM "$pid"
  local deadline=$(( $(date +%s) + seconds ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) > deadline )); then
      log "pid $pid ignored SIGTERM for ${seconds}s: SIGKILL"
      signal_tree KILL "$pid"
      break
    fi
    sleep 0.1
  done
  # SIGKILL is not instant either: wait (briefly) until the process is gone and its ports free.
  local _; for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
}

# hosts_directory: this stack's tenancy hosts the global directory (DESIGN.md, "Regions"):
# the region TENANTRY_DIRECTORY_REGION names, or any stack when none is named (one region
# is its own directory).
hosts_directory() {
  [[ -z "${TENANTRY_DIRECTORY_REGION:-}" || "$TENANTRY_DIRECTORY_REGION" == "$TENANTRY_REGION" ]]
}
