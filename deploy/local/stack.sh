#!/usr/bin/env bash
# The local servers: PostgreSQL, Redis and a real Apache Kafka broker (KRaft, one node).
#   stack.sh {pg|redis|kafka|mail} {start|stop|status}
#   stack.sh {start-all|stop-all|status}
# Every start is idempotent; state lives under .local/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ------------------------------------------------------------------ PostgreSQL
PGDATA="$LOCAL/pg/data"
PGSOCK="$LOCAL/pg/socket"
pg_as() { runuser -u postgres -- "$@"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$TENANTRY_PG_PORT"; }
psql_super() {
  PGPASSWORD="$TENANTRY_PG_SUPERPASSWORD" psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
    -p "$TENANTRY_PG_PORT" -U "$TENANTRY_PG_SUPERUSER" -d postgres "$@"
}

pg_start() {
  if pg_ready; then return 0; fi
  mkdir -p "$LOCAL/pg" "$PGSOCK"
  chown postgres:postgres "$LOCAL/pg" "$PGSOCK"
  chmod o+x "$REPO" "$LOCAL" 2>/dev/null || true
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    log "initdb $PGDATA"
    local pwfile; pwfile="$(mktemp)"; printf '%s\n' "$TENANTRY_PG_SUPERPASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    pg_as "$PG_BIN/initdb" -D "$PGDATA" -U "$TENANTRY_PG_SUPERUSER" --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=peer -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $TENANTRY_PG_PORT
unix_socket_directories = '$PGSOCK'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
  fi
  log "starting PostgreSQL on 127.0.0.1:$TENANTRY_PG_PORT"
  pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOCAL/pg/server.log" -w -t 60 start >/dev/null
  wait_for "PostgreSQL" 60 pg_ready
  pg_bootstrap
}

pg_bootstrap() {
  psql_super <<SQL
SELECT 'CREATE ROLE $TENANTRY_PG_OWNER LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$TENANTRY_PG_OWNER') \gexec
SELECT 'CREATE ROLE $TENANTRY_PG_APP LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$TENANTRY_PG_APP') \gexec
ALTER ROLE $TENANTRY_PG_OWNER PASSWORD '$TENANTRY_PG_OWNER_PASSWORD';
ALTER ROLE $TENANTRY_PG_APP PASSWORD '$TENANTRY_PG_APP_PASSWORD';
SQL
  for svc in tenancy identity provisioning webhooks ratelimit; do
    psql_super <<SQL
SELECT 'CREATE DATABASE tenantry_$svc OWNER $TENANTRY_PG_OWNER'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenantry_$svc') \gexec
GRANT CONNECT ON DATABASE tenantry_$svc TO $TENANTRY_PG_APP;
SQL
  done
}

pg_stop() {
  if [[ -f "$PGDATA/postmaster.pid" ]]; then
    log "stopping PostgreSQL"
    pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null || true
  fi
}

pg_status() { pg_ready && echo "postgres: up on 127.0.0.1:$TENANTRY_PG_PORT" || echo "postgres: down"; }

# ------------------------------------------------------------------ Redis
REDIS_PID="$LOCAL/run/redis.pid"
redis_ready() { redis-cli -h 127.0.0.1 -p "$TENANTRY_REDIS_PORT" ping | grep -q PONG; }

redis_start() {
  if redis_ready; then return 0; fi
  mkdir -p "$LOCAL/redis"
  log "starting Redis on 127.0.0.1:$TENANTRY_REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$TENANTRY_REDIS_PORT" --daemonize yes \
    --pidfile "$REDIS_PID" --dir "$LOCAL/redis" --logfile "$LOCAL/redis/redis.log" \
    --save "" --appendonly no --protected-mode yes
  wait_for "Redis" 30 redis_ready
}

redis_stop() {
  if redis_ready; then
    log "stopping Redis"
    redis-cli -h 127.0.0.1 -p "$TENANTRY_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  stop_pid "$REDIS_PID" 10
}

redis_status() { redis_ready && echo "redis: up on 127.0.0.1:$TENANTRY_REDIS_PORT" || echo "redis: down"; }

# ------------------------------------------------------------------ Kafka
KDIR="$LOCAL/kafka"
KAFKA_PID="$LOCAL/run/kafka.pid"
KAFKA_JAVA=(java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
  -Dkafka.logs.dir="$KDIR/logs" -Dlog4j2.configurationFile="$REPO/deploy/local/kafka/log4j2.xml"
  -cp "$KDIR/libs/*")
kafka_ready() {
  "$PYTHON" - "$TENANTRY_KAFKA_PORT" <<'PY'
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", request_timeout_ms=3000)
    await asyncio.wait_for(admin.start(), 5)
    try:
        await asyncio.wait_for(admin.describe_cluster(), 5)
    finally:
        await admin.close()
asyncio.run(main())
PY
}

kafka_configure() {
  mkdir -p "$KDIR/config" "$KDIR/data" "$KDIR/logs"
  cat > "$KDIR/config/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$TENANTRY_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$TENANTRY_KAFKA_PORT,CONTROLLER://127.0.0.1:$TENANTRY_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$TENANTRY_KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KDIR/data
num.partitions=$TENANTRY_KAFKA_PARTITIONS
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
PROPS
}

kafka_start() {
  if pid_alive "$KAFKA_PID" && kafka_ready; then return 0; fi
  if [[ -z "$(ls -A "$KDIR/libs" 2>/dev/null)" ]]; then
    log "Kafka jars missing: run deploy/local/install.sh"; return 1
  fi
  kafka_configure
  if [[ ! -f "$KDIR/data/meta.properties" ]]; then
    log "formatting KRaft storage"
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone -t "$(cat /proc/sys/kernel/random/uuid)" \
      -c "$KDIR/config/server.properties" >"$KDIR/logs/format.log" 2>&1
  fi
  if ! pid_alive "$KAFKA_PID"; then
    log "starting Kafka on 127.0.0.1:$TENANTRY_KAFKA_PORT"
    setsid nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$KDIR/config/server.properties" \
      >"$KDIR/logs/stdout.log" 2>&1 < /dev/null &
    echo $! > "$KAFKA_PID"
  fi
  if ! wait_for "Kafka" 120 kafka_ready; then
    tail -n 40 "$KDIR/logs/stdout.log" "$KDIR/logs/server.log" >&2 || true
    return 1
  fi
}

kafka_stop() {
  if pid_alive "$KAFKA_PID"; then log "stopping Kafka"; fi
  stop_pid "$KAFKA_PID" 30
}

kafka_status() { pid_alive "$KAFKA_PID" && kafka_ready && echo "kafka: up on 127.0.0.1:$TENANTRY_KAFKA_PORT" || echo "kafka: down"; }

# ------------------------------------------------------------------ mail sink
MAIL_PID="$LOCAL/run/mail-sink.pid"
mail_ready() {
  "$PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' \
    "$TENANTRY_SMTP_PORT"
}
mail_start() {
  if pid_alive "$MAIL_PID" && mail_ready 2>/dev/null; then return 0; fi
  log "starting the mail sink on 127.0.0.1:$TENANTRY_SMTP_PORT (.local/mail/new)"
  (exec setsid nohup "$PYTHON" "$REPO/deploy/local/mail_sink.py" --port "$TENANTRY_SMTP_PORT" \
    --dir "$LOCAL/mail" >>"$LOCAL/log/mail-sink.log" 2>&1 </dev/null) &
  echo $! > "$MAIL_PID"
  wait_for "mail sink" 30 mail_ready
}
mail_stop() { stop_pid "$MAIL_PID" 10; }
mail_status() { pid_alive "$MAIL_PID" && echo "mail sink: up on 127.0.0.1:$TENANTRY_SMTP_PORT" || echo "mail sink: down"; }

# ------------------------------------------------------------------ dispatch
case "${1:-}/${2:-}" in
  pg/start) pg_start ;;       pg/stop) pg_stop ;;       pg/status) pg_status ;;
  redis/start) redis_start ;; redis/stop) redis_stop ;; redis/status) redis_status ;;
  kafka/start) kafka_start ;; kafka/stop) kafka_stop ;; kafka/status) kafka_status ;;
  mail/start) mail_start ;;   mail/stop) mail_stop ;;   mail/status) mail_status ;;
  start-all/) pg_start; redis_start; kafka_start; mail_start ;;
  stop-all/) mail_stop; kafka_stop; redis_stop; pg_stop ;;
  status/) pg_status; redis_status; kafka_status; mail_status ;;
  *) echo "usage: $0 {pg|redis|kafka} {start|stop|status} | start-all | stop-all | status" >&2; exit 2 ;;
esac
