#!/usr/bin/env bash
# The five services, each as an api and a worker process.
#   services.sh {start|stop|status}
# start: create the Kafka topics, migrate each database, start the processes, wait until
# every api answers /readyz, print the URLs.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SERVICES=(tenancy identity provisioning webhooks ratelimit)

port_of() { local var="TENANTRY_${1^^}_PORT"; echo "${!var}"; }

service_env() {
  local svc="$1" urls="" s
  for s in "${SERVICES[@]}"; do urls+="${urls:+,}$s=http://127.0.0.1:$(port_of "$s")"; done
  echo "TENANTRY_DATABASE_URL=postgresql://$TENANTRY_PG_APP:$TENANTRY_PG_APP_PASSWORD@127.0.0.1:$TENANTRY_PG_PORT/tenantry_$svc"
  echo "TENANTRY_MIGRATION_DATABASE_URL=postgresql://$TENANTRY_PG_OWNER:$TENANTRY_PG_OWNER_PASSWORD@127.0.0.1:$TENANTRY_PG_PORT/tenantry_$svc"
  echo "TENANTRY_KAFKA_BOOTSTRAP=127.0.0.1:$TENANTRY_KAFKA_PORT"
  echo "TENANTRY_REDIS_URL=redis://127.0.0.1:$TENANTRY_REDIS_PORT/0"
  echo "TENANTRY_REGION=$TENANTRY_REGION"
  echo "TENANTRY_HTTP_HOST=127.0.0.1"
  echo "TENANTRY_HTTP_PORT=$(port_of "$svc")"
  echo "TENANTRY_SERVICE_URLS=$urls"
  echo "TENANTRY_SMTP_HOST=127.0.0.1"
  echo "TENANTRY_SMTP_PORT=$TENANTRY_SMTP_PORT"
  echo "TENANTRY_MASTER_KEY=$TENANTRY_MASTER_KEY"
  echo "TENANTRY_BOOTSTRAP_SECRET=$TENANTRY_BOOTSTRAP_SECRET"
}

run_in_env() {  # run_in_env SERVICE COMMAND... (execs: the pid stays the program's)
  local svc="$1"; shift
  local vars; mapfile -t vars < <(service_env "$svc")
  exec env "${vars[@]}" "$@"
}

ready() { curl -fsS "http://127.0.0.1:$(port_of "$1")/readyz" >/dev/null; }

start() {
  "$PYTHON" -m tenantry_events.topics --bootstrap "127.0.0.1:$TENANTRY_KAFKA_PORT" \
    --partitions "$TENANTRY_KAFKA_PARTITIONS" >&2
  local svc role
  for svc in "${SERVICES[@]}"; do
    (run_in_env "$svc" "$REPO/.venv/bin/tenantry-$svc" migrate) >&2
  done
  for svc in "${SERVICES[@]}"; do
    for role in api worker; do
      local pidfile="$LOCAL/run/$svc-$role.pid"
      pid_alive "$pidfile" && continue
      (run_in_env "$svc" setsid nohup "$REPO/.venv/bin/tenantry-$svc" "$role" \
        >>"$LOCAL/log/$svc-$role.log" 2>&1 < /dev/null) &
      echo $! > "$pidfile"
    done
  done
  for svc in "${SERVICES[@]}"; do
    if ! wait_for "$svc /readyz" 60 ready "$svc"; then
      tail -n 30 "$LOCAL/log/$svc-api.log" >&2 || true
      return 1
    fi
  done
  print_urls
}

stop() {
  local svc role
  for svc in "${SERVICES[@]}"; do
    for role in api worker; do stop_pid "$LOCAL/run/$svc-$role.pid" 15 & done
  done
  wait
}

status() {
  local svc role
  for svc in "${SERVICES[@]}"; do
    for role in api worker; do
      pid_alive "$LOCAL/run/$svc-$role.pid" && echo "$svc $role: running" || echo "$svc $role: stopped"
    done
  done
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
  echo "  kafka         127.0.0.1:$TENANTRY_KAFKA_PORT"
  echo "  logs          $LOCAL/log/"
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; urls) print_urls ;;
  *) echo "usage: $0 {start|stop|status|urls}" >&2; exit 2 ;;
esac
