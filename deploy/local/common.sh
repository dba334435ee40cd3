# Shared by deploy/local/*.sh: repo paths and the stack settings (environment wins).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="$REPO/.local"
while read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  key="${line%%=*}"
  if [[ -z "${!key:-}" ]]; then export "$key=${line#*=}"; fi
done < "$REPO/deploy/local/stack.env"
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
PYTHON="$REPO/.venv/bin/python"
mkdir -p "$LOCAL/log" "$LOCAL/run"

log() { printf '[tenantry] %s\n' "$*" >&2; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds or the deadline passes.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then log "timed out after ${seconds}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pidfile="$1" seconds="${2:-15}"
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(( $(date +%s) + seconds ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) > deadline )); then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.1
  done
  rm -f "$pidfile"
}
