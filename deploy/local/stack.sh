#!/usr/bin/env bash
# The local servers: PostgreSQL, Redis, a real Apache Kafka broker (KRaft, one node) and
# the SMTP sink the services send mail to (deploy/local/mail_sink.py).
#   stack.sh {pg|redis|kafka|mail} {start|stop|status}
#   stack.sh {start-all|stop-all|status}
# Every start is idempotent (ours, running and answering: nothing to do); state lives under
# .local/ (a region's under .local/regions/<id>/: deploy/local/regions.sh); ports and
# passwords come from deploy/local/stack.env (the environment wins).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# A port held by a process we did not start is an error, never "already running".
foreign_port() {  # foreign_port NAME PORT
  port_open "$2" || return 1
  log "$1: 127.0.0.1:$2 is taken by a process this checkout's stack did not start"
  log "(another checkout's stack? see \`ss -ltnp 'sport = :$2'\`): stop it or override the port"
  return 0
}

# ------------------------------------------------------------------ PostgreSQL
PGDATA="$LOCAL/pg/data"
PGSOCK="$LOCAL/pg/socket"
pg_as() { runuser -u postgres -- "$@"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$TENANTRY_PG_PORT"; }
pg_running() {
  [[ -f "$PGDATA/postmaster.pid" ]] && pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}
psql_super() {
  PGPASSWORD="$TENANTRY_PG_SUPERPASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
    -p "$TENANTRY_PG_PORT" -U "$TENANTRY_PG_SUPERUSER" -d postgres "$@"
}

# The postgres user must reach .local/pg: give "others" search permission (x, not r) to
# each directory above it that lacks it (a clone under /root, say).
pg_traversable() {
  local dir="$LOCAL"
  while [[ "$dir" != "/" ]]; do
    if [[ -d "$dir" ]] && ! runuser -u postgres -- test -x "$dir"; then
      log "chmod o+x $dir (PostgreSQL runs as postgres and must traverse it)"
      chmod o+x "$dir"
    fi
    dir="$(dirname "$dir")"
  done
}

pg_start() {
  [[ -n "$PG_BIN" && -x "$PG_BIN/postgres" ]] || die "PostgreSQL is not installed: run deploy/local/install.sh"
  # Running already: the roles and databases are still brought up to date (a database added
  # since, such as the directory's, appears without a restart).
  if pg_running && pg_ready; then pg_bootstrap; return 0; fi
  if ! pg_running && foreign_port postgres "$TENANTRY_PG_PORT"; then return 1; fi
  mkdir -p "$LOCAL/pg" "$PGSOCK"
  chown postgres:postgres "$LOCAL/pg" "$PGSOCK"
  pg_traversable
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    log "initdb $PGDATA"
    local pwfile; pwfile="$(mktemp)"; printf '%s\n' "$TENANTRY_PG_SUPERPASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    pg_as "$PG_BIN/initdb" -D "$PGDATA" -U "$TENANTRY_PG_SUPERUSER" --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=peer -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    cat >> "$PGDATA/postgresql.conf" <<CONF

# ---- the tenantry local stack (deploy/local/stack.sh); the port is passed on start
listen_addresses = '127.0.0.1'
port = $TENANTRY_PG_PORT
unix_socket_directories = '$PGSOCK'
max_connections = 300
shared_buffers = 256MB
fsync = off
# on: a commit that was confirmed survives even an immediate stop (the fault tests stop
# the server); with fsync off it costs next to nothing.
synchronous_commit = on
full_page_writes = off
log_min_messages = warning
CONF
  fi
  if ! pg_running; then
    log "starting PostgreSQL on 127.0.0.1:$TENANTRY_PG_PORT"
    # -p: the port from the environment wins over the one written at initdb time.
    pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOCAL/pg/server.log" -w -t 60 \
      -o "-p $TENANTRY_PG_PORT -c synchronous_commit=on" start >/dev/null \
      || { tail -n 20 "$LOCAL/pg/server.log" >&2; return 1; }
  fi
  wait_for "PostgreSQL" 60 pg_ready || { tail -n 20 "$LOCAL/pg/server.log" >&2; return 1; }
  pg_bootstrap
}

# Roles and databases, idempotently: the owner role runs migrations and owns the five
# databases; the app role is what services connect as (no superuser, no BYPASSRLS). The
# region hosting the global directory also gets tenancy's directory database.
pg_bootstrap() {
  psql_super -v owner="$TENANTRY_PG_OWNER" -v app="$TENANTRY_PG_APP" \
    -v owner_pw="$TENANTRY_PG_OWNER_PASSWORD" -v app_pw="$TENANTRY_PG_APP_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'owner')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I', :'app')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"owner" LOGIN CREATEDB NOSUPERUSER PASSWORD :'owner_pw';
ALTER ROLE :"app" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'app_pw';
SQL
  local databases=(tenancy identity provisioning webhooks ratelimit) db
  if hosts_directory; then databases+=(directory); fi
  for db in "${databases[@]}"; do
    psql_super -v db="tenantry_$db" -v owner="$TENANTRY_PG_OWNER" -v app="$TENANTRY_PG_APP" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
GRANT CONNECT ON DATABASE :"db" TO :"app";
SQL
  done
}

pg_stop() {
  if pg_running; then
    log "stopping PostgreSQL"
    pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null \
      || pg_as "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null || true
  fi
}

pg_status() {
  if pg_running && pg_ready; then echo "postgres: up on 127.0.0.1:$TENANTRY_PG_PORT ($PGDATA)"
  else echo "postgres: down"; return 1; fi
}

# ------------------------------------------------------------------ Redis
REDIS_PID="$LOCAL/run/redis.pid"
redis_ready() { redis-cli -h 127.0.0.1 -p "$TENANTRY_REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

redis_start() {
  command -v redis-server >/dev/null 2>&1 || die "Redis is not installed: run deploy/local/install.sh"
  if pid_alive "$REDIS_PID" && redis_ready; then return 0; fi
  if ! pid_alive "$REDIS_PID"; then
    foreign_port redis "$TENANTRY_REDIS_PORT" && return 1
    mkdir -p "$LOCAL/redis"
    log "starting Redis on 127.0.0.1:$TENANTRY_REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$TENANTRY_REDIS_PORT" --daemonize yes \
      --pidfile "$REDIS_PID" --dir "$LOCAL/redis" --logfile "$LOCAL/redis/redis.log" \
      --save "" --appendonly no --protected-mode yes
  fi
  wait_for "Redis" 30 redis_ready || { tail -n 20 "$LOCAL/redis/redis.log" >&2; return 1; }
}

redis_stop() {
  if pid_alive "$REDIS_PID"; then
    log "stopping Redis"
    redis-cli -h 127.0.0.1 -p "$TENANTRY_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  stop_pid "$REDIS_PID" 10
}

redis_status() {
  if pid_alive "$REDIS_PID" && redis_ready; then echo "redis: up on 127.0.0.1:$TENANTRY_REDIS_PORT"
  else echo "redis: down"; return 1; fi
}

# ------------------------------------------------------------------ Kafka
KDIR="$LOCAL/kafka"
KAFKA_PID="$LOCAL/run/kafka.pid"
KAFKA_JAVA=(java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
  -Dkafka.logs.dir="$KDIR/logs" -Dlog4j2.configurationFile="$REPO/deploy/local/kafka/log4j2.xml"
  -cp "$KAFKA_LIBS/*")

# kafka_wait SECONDS [PID]: one Python process asks the broker for its topics with
# aiokafka's admin client until it answers (0), the deadline passes (1) or PID exits (2).
kafka_wait() {
  "$PYTHON" - "$TENANTRY_KAFKA_PORT" "$1" "${2:-0}" <<'PY'
import asyncio, logging, os, sys, time
from aiokafka.admin import AIOKafkaAdminClient

logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)  # refusals while it boots are expected

port, seconds, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

def alive() -> bool:
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

async def answers() -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 4)
        await asyncio.wait_for(admin.list_topics(), 4)
        return True
    except Exception:
        return False
    finally:
        try:
            await asyncio.wait_for(admin.close(), 2)
        except Exception:
            pass

async def main() -> int:
    deadline = time.monotonic() + seconds
    while True:
        if await answers():
            return 0
        if not alive():
            print(f"kafka: the broker (pid {pid}) exited", file=sys.stderr)
            return 2
        if time.monotonic() > deadline:
            print(f"kafka: no answer on 127.0.0.1:{port} within {seconds:.0f}s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.25)

sys.exit(asyncio.run(main()))
PY
}

kafka_configure() {
  mkdir -p "$KDIR/config" "$KDIR/data" "$KDIR/logs"
  cat > "$KDIR/config/server.properties" <<PROPS
# Written by deploy/local/stack.sh on every start: change the script, not this file.
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
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
PROPS
}

kafka_start() {
  if pid_alive "$KAFKA_PID" && kafka_wait 5 "$(cat "$KAFKA_PID")" 2>/dev/null; then return 0; fi
  [[ -n "$(ls -A "$KAFKA_LIBS" 2>/dev/null)" ]] || die "the Kafka jars are missing: run deploy/local/install.sh"
  [[ -x "$PYTHON" ]] || die ".venv is missing: run deploy/local/install.sh"
  if ! pid_alive "$KAFKA_PID"; then
    if foreign_port kafka "$TENANTRY_KAFKA_PORT" || foreign_port kafka "$TENANTRY_KAFKA_CONTROLLER_PORT"; then
      return 1
    fi
    kafka_configure
    if [[ ! -f "$KDIR/data/meta.properties" ]]; then
      log "formatting KRaft storage in $KDIR/data"
      "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone \
        -t "$(cat /proc/sys/kernel/random/uuid)" -c "$KDIR/config/server.properties" \
        >"$KDIR/logs/format.log" 2>&1 || { cat "$KDIR/logs/format.log" >&2; return 1; }
    fi
    log "starting Kafka on 127.0.0.1:$TENANTRY_KAFKA_PORT (controller :$TENANTRY_KAFKA_CONTROLLER_PORT)"
    setsid nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$KDIR/config/server.properties" \
      >>"$KDIR/logs/stdout.log" 2>&1 < /dev/null &
    echo $! > "$KAFKA_PID"
  fi
  if ! kafka_wait 90 "$(cat "$KAFKA_PID")"; then
    tail -n 40 "$KDIR/logs/stdout.log" "$KDIR/logs/server.log" >&2 2>/dev/null || true
    pid_alive "$KAFKA_PID" || rm -f "$KAFKA_PID"
    return 1
  fi
}

kafka_stop() {
  if pid_alive "$KAFKA_PID"; then log "stopping Kafka"; fi
  stop_pid "$KAFKA_PID" 30
}

kafka_status() {
  if pid_alive "$KAFKA_PID" && kafka_wait 3 "$(cat "$KAFKA_PID")" 2>/dev/null; then
    echo "kafka: up on 127.0.0.1:$TENANTRY_KAFKA_PORT"
  else echo "kafka: down"; return 1; fi
}

# ------------------------------------------------------------------ SMTP sink
MAIL_PID="$LOCAL/run/mail-sink.pid"
MAIL_SINK="$REPO/deploy/local/mail_sink.py"

mail_start() {
  if pid_alive "$MAIL_PID" && port_open "$TENANTRY_SMTP_PORT"; then return 0; fi
  [[ -x "$PYTHON" ]] || die ".venv is missing: run deploy/local/install.sh"
  if ! pid_alive "$MAIL_PID"; then
    foreign_port mail "$TENANTRY_SMTP_PORT" && return 1
    log "starting the mail sink on 127.0.0.1:$TENANTRY_SMTP_PORT (mail lands in $LOCAL/mail/new)"
    setsid nohup "$PYTHON" "$MAIL_SINK" --host 127.0.0.1 --port "$TENANTRY_SMTP_PORT" \
      --dir "$LOCAL/mail" >>"$LOCAL/log/mail-sink.log" 2>&1 < /dev/null &
    echo $! > "$MAIL_PID"
  fi
  wait_for "the mail sink" 30 port_open "$TENANTRY_SMTP_PORT" \
    || { tail -n 20 "$LOCAL/log/mail-sink.log" >&2; return 1; }
}

mail_stop() { stop_pid "$MAIL_PID" 10; }

mail_status() {
  if pid_alive "$MAIL_PID" && port_open "$TENANTRY_SMTP_PORT"; then
    echo "mail sink: up on 127.0.0.1:$TENANTRY_SMTP_PORT ($LOCAL/mail)"
  else echo "mail sink: down"; return 1; fi
}

# ------------------------------------------------------------------ dispatch
all_status() {
  local rc=0
  pg_status || rc=1; redis_status || rc=1; kafka_status || rc=1; mail_status || rc=1
  return $rc
}

case "${1:-}/${2:-}" in
  pg/start) pg_start ;;       pg/stop) pg_stop ;;       pg/status) pg_status ;;
  redis/start) redis_start ;; redis/stop) redis_stop ;; redis/status) redis_status ;;
  kafka/start) kafka_start ;; kafka/stop) kafka_stop ;; kafka/status) kafka_status ;;
  mail/start) mail_start ;;   mail/stop) mail_stop ;;   mail/status) mail_status ;;
  start-all/) pg_start; redis_start; kafka_start; mail_start ;;
  stop-all/) mail_stop; kafka_stop; redis_stop; pg_stop ;;
  status/) all_status ;;
  *) echo "usage: $0 {pg|redis|kafka|mail} {start|stop|status} | start-all | stop-all | status" >&2; exit 2 ;;
esac
