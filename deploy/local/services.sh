#!/usr/bin/env bash
# The five services, each as an api and a worker process.
#   services.sh {start|stop|restart} [SERVICE...]   (all five when none is named)
#   services.sh {status|urls|env SERVICE}
# start: create the Kafka topics, migrate each named database, start the processes that are
# not running, wait until each named api answers /readyz, print the URLs. `restart identity`
# reloads one service's code in a few seconds without touching the others.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SERVICES=(tenancy identity provisioning webhooks ratelimit)

port_of() { local var="TENANTRY_${1^^}_PORT"; echo "${!var}"; }
# The worker's /healthz and /readyz: 100 above the api's port (8201 for tenancy, ...).
worker_health_port_of() { echo $(( $(port_of "$1") + 100 )); }

# app_dsn / owner_dsn DATABASE: a database of this stack's PostgreSQL, as the app role (what
# services connect as) or the owner role (what migrations run as).
app_dsn() { echo "postgresql://$TENANTRY_PG_APP:$TENANTRY_PG_APP_PASSWORD@127.0.0.1:$TENANTRY_PG_PORT/$1"; }
owner_dsn() { echo "postgresql://$TENANTRY_PG_OWNER:$TENANTRY_PG_OWNER_PASSWORD@127.0.0.1:$TENANTRY_PG_PORT/$1"; }

service_env() {
  local svc="$1" urls="" s
  for s in "${SERVICES[@]}"; do urls+="${urls:+,}$s=http://127.0.0.1:$(port_of "$s")"; done
  echo "TENANTRY_DATABASE_URL=$(app_dsn "tenantry_$svc")"
  echo "TENANTRY_MIGRATION_DATABASE_URL=$(owner_dsn "tenantry_$svc")"
  echo "TENANTRY_KAFKA_BOOTSTRAP=127.0.0.1:$TENANTRY_KAFKA_PORT"
  echo "TENANTRY_REDIS_URL=redis://127.0.0.1:$TENANTRY_REDIS_PORT/0"
  echo "TENANTRY_REGION=$TENANTRY_REGION"
  echo "TENANTRY_HTTP_HOST=127.0.0.1"
  echo "TENANTRY_HTTP_PORT=$(port_of "$svc")"
  echo "TENANTRY_WORKER_HEALTH_PORT=$(worker_health_port_of "$svc")"
  echo "TENANTRY_SERVICE_URLS=$urls"
  echo "TENANTRY_SMTP_HOST=127.0.0.1"
  echo "TENANTRY_SMTP_PORT=$TENANTRY_SMTP_PORT"
  echo "TENANTRY_MASTER_KEY=$TENANTRY_MASTER_KEY"
  echo "TENANTRY_BOOTSTRAP_SECRET=$TENANTRY_BOOTSTRAP_SECRET"
  echo "TENANTRY_INTERNAL_API_SECRET=$TENANTRY_INTERNAL_API_SECRET"
  # Export archives and parts (the embedded object store): one directory every service
  # of this checkout shares, wherever a process is started from.
  echo "TENANTRY_OBJECT_STORE_DIR=$LOCAL/objects"
  # Regions (deploy/local/regions.sh sets them; one region needs none of them).
  local var
  for var in TENANTRY_REGIONS TENANTRY_DIRECTORY_REGION TENANTRY_DIRECTORY_URL TENANTRY_DIRECTORY_SECRET; do
    if [[ -n "${!var:-}" ]]; then echo "$var=${!var}"; fi
  done
  if [[ $svc == tenancy ]] && hosts_directory; then
    echo "TENANTRY_DIRECTORY_DATABASE_URL=$(app_dsn tenantry_directory)"
    echo "TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL=$(owner_dsn tenantry_directory)"
  fi
}

run_in_env() {  # run_in_env SERVICE COMMAND... (execs: the pid stays the program's)
  local svc="$1"; shift
  local vars; mapfile -t vars < <(service_env "$svc")
  exec env "${vars[@]}" "$@"
}

ready() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$(port_of "$1")/readyz"; }

tails() {  # tails SERVICE: the end of both of its logs, on stderr
  local role
  for role in api worker; do
    [[ -f "$LOCAL/log/$1-$role.log" ]] || continue
    echo "----- $LOCAL/log/$1-$role.log (last 40 lines)" >&2
    tail -n 40 "$LOCAL/log/$1-$role.log" >&2
  done
}

# wait_ready SERVICE SECONDS: /readyz answers 200; fails early if the api or worker exits.
wait_ready() {
  local svc="$1" deadline=$(( $(date +%s) + $2 )) role
  until ready "$svc" 2>/dev/null; do
    for role in api worker; do
      if ! pid_alive "$LOCAL/run/$svc-$role.pid"; then
        log "$svc $role exited before $svc was ready"; tails "$svc"; return 1
      fi
    done
    if (( $(date +%s) > deadline )); then
      log "$svc: no 200 from http://127.0.0.1:$(port_of "$svc")/readyz within ${2}s"; tails "$svc"; return 1
    fi
    sleep 0.25
  done
}

# selected SERVICE...: the named services (checked), or all five.
selected() {
  local s
  if (( $# == 0 )); then printf '%s\n' "${SERVICES[@]}"; return; fi
  for s in "$@"; do
    [[ " ${SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (one of: ${SERVICES[*]})"
    echo "$s"
  done
}

start() {
  local targets; mapfile -t targets < <(selected "$@")
  [[ -x "$PYTHON" ]] || die ".venv is missing: run deploy/local/install.sh"
  "$PYTHON" -m tenantry_events.topics --bootstrap "127.0.0.1:$TENANTRY_KAFKA_PORT" \
    --partitions "$TENANTRY_KAFKA_PARTITIONS" >&2 \
    || die "creating the Kafka topics failed (is the stack up? deploy/local/stack.sh status)"
  local svc role
  # Each migration is its own process (mostly Python start-up): run them side by side.
  local pids=() failed=0 pid
  for svc in "${targets[@]}"; do
    [[ -x "$REPO/.venv/bin/tenantry-$svc" ]] || die "no .venv/bin/tenantry-$svc: run deploy/local/install.sh"
    (run_in_env "$svc" "$REPO/.venv/bin/tenantry-$svc" migrate) >&2 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || die "a migration failed (see above)"
  for svc in "${targets[@]}"; do
    for role in api worker; do
      local pidfile="$LOCAL/run/$svc-$role.pid"
      pid_alive "$pidfile" && continue
      if [[ $role == api ]] && port_open "$(port_of "$svc")"; then
        die "$svc: 127.0.0.1:$(port_of "$svc") is taken by a process this checkout did not start"
      fi
      (run_in_env "$svc" setsid nohup "$REPO/.venv/bin/tenantry-$svc" "$role" \
        >>"$LOCAL/log/$svc-$role.log" 2>&1 < /dev/null) &
      echo $! > "$pidfile"
    done
  done
  for svc in "${targets[@]}"; do wait_ready "$svc" 60 || return 1; done
  (( $# > 0 )) || print_urls
}

stop() {
  local targets svc role; mapfile -t targets < <(selected "$@")
  for svc in "${targets[@]}"; do
    for role in api worker; do stop_pid "$LOCAL/run/$svc-$role.pid" 15 & done
  done
  wait
}

status() {
  local svc role rc=0
  for svc in "${SERVICES[@]}"; do
    for role in api worker; do
      if pid_alive "$LOCAL/run/$svc-$role.pid"; then echo "$svc $role: running (pid $(cat "$LOCAL/run/$svc-$role.pid"))"
      else echo "$svc $role: stopped"; rc=1; fi
    done
    if ready "$svc" 2>/dev/null; then echo "$svc: ready on http://127.0.0.1:$(port_of "$svc")"
    else echo "$svc: not ready"; rc=1; fi
    local health; health="$(worker_health_port_of "$svc")"
    if curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$health/readyz" 2>/dev/null; then
      echo "$svc worker: ready (http://127.0.0.1:$health/readyz)"
    else echo "$svc worker: not ready"; rc=1; fi
  done
  return $rc
}

print_urls() {
  echo
  echo "Tenantry is up (region $TENANTRY_REGION):"
  local svc
  for svc in "${SERVICES[@]}"; do
    printf '  %-13s http://127.0.0.1:%s/v1   (OpenAPI: /schema/openapi.json, docs: /schema, ready: /readyz)\n' \
      "$svc" "$(port_of "$svc")"
  done
  echo "  postgres      postgresql://127.0.0.1:$TENANTRY_PG_PORT  (databases tenantry_<service>)"
  echo "  redis         redis://127.0.0.1:$TENANTRY_REDIS_PORT"
  echo "  kafka         127.0.0.1:$TENANTRY_KAFKA_PORT  (KRaft, one node; $TENANTRY_KAFKA_PARTITIONS partitions per topic)"
  echo "  smtp          127.0.0.1:$TENANTRY_SMTP_PORT  (sink: mail lands in $LOCAL/mail/new)"
  if hosts_directory; then echo "  directory     hosted here (database tenantry_directory)"
  else echo "  directory     hosted by region $TENANTRY_DIRECTORY_REGION"; fi
  echo "  logs          $LOCAL/log/"
}

case "${1:-}" in
  start) shift; start "$@" ;; stop) shift; stop "$@" ;; restart) shift; stop "$@"; start "$@" ;; status) status ;; urls) print_urls ;;
  env) service_env "${2:?usage: $0 env SERVICE}" ;;  # what an extra instance needs (tests, bench)
  *) echo "usage: $0 {start|stop|restart|status|urls|env SERVICE}" >&2; exit 2 ;;
esac
