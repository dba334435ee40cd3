#!/usr/bin/env bash
# Two or more complete regions side by side on this machine (`make up REGIONS="us eu"`): each
# with its own PostgreSQL, Redis, Kafka broker, SMTP sink and the five services (api and
# worker), on ports of its own, so the default stack (`make up`, region "local") runs beside
# them untouched. The first region listed hosts the global directory (DESIGN.md, "Regions").
#   regions.sh {start|stop|status|urls} [REGION...]
#   regions.sh vars REGION              the region's settings, KEY=VALUE (the test fixtures)
#   regions.sh env REGION SERVICE       a service's environment in REGION (services.sh env)
#   regions.sh exec REGION COMMAND...   COMMAND in REGION's environment, for instance
#                                       `regions.sh exec eu bash deploy/local/stack.sh kafka stop`
# The regions are the arguments, else $REGIONS, else the ones started last. A region's state
# lives in .local/regions/<id>/ (the same layout as .local/); the Kafka jars are shared.
#
# Ports: the i-th region listed (0-based) takes every port of stack.env plus (i+1) *
# TENANTRY_REGION_PORT_STEP (1000): us 6433/7380/10092/3525/9101-9105, eu 7433/8380/11092/
# 4525/10101-10105. A region keeps the position it was first started in (its Kafka metadata
# holds its controller's port): starting it in another position is refused.
#
# Memory (measured 2026-12-07 with ps and /proc/<pid>/smaps_rollup over every process of
# both regions: pid files, postmasters and their backends): "us eu" idle right after start
# RSS 4.3 GB in all, 2.15 GB per region (ten Python processes 1.2 GB, Kafka 0.4 GB,
# PostgreSQL 0.58 GB counting its shared buffers again in each backend), PSS 2.75 GB; after
# the residency tests ran RSS 5.5 GB, PSS 3.4 GB. README.md, "Two regions".
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$REPO/deploy/local"
# Not $LOCAL: this script runs outside any region and finds every region's state here.
REGIONS_DIR="$REPO/.local/regions"
DEPLOYMENT_FILE="$REGIONS_DIR/started"
SERVICES=(tenancy identity provisioning webhooks ratelimit)
PORTS=(PG REDIS KAFKA KAFKA_CONTROLLER SMTP TENANCY IDENTITY PROVISIONING WEBHOOKS RATELIMIT)
EPHEMERAL_PORTS_START=32768  # Linux's default ip_local_port_range: outgoing connections' ports

# A region's settings would shift every port again (a region inside a region).
[[ -z "${TENANTRY_LOCAL_DIR:-}" ]] || die "regions.sh runs outside a region's environment (TENANTRY_LOCAL_DIR is set)"

# deployment REGION...: fills DEPLOYMENT with the regions (arguments, $REGIONS, or the ones
# started last), checked: ids as the region contract has them, each once, none "local".
DEPLOYMENT=()
deployment() {
  DEPLOYMENT=("$@")
  if (( ${#DEPLOYMENT[@]} == 0 )) && [[ -n "${REGIONS:-}" ]]; then read -ra DEPLOYMENT <<< "$REGIONS"; fi
  if (( ${#DEPLOYMENT[@]} == 0 )) && [[ -f "$DEPLOYMENT_FILE" ]]; then mapfile -t DEPLOYMENT < "$DEPLOYMENT_FILE"; fi
  (( ${#DEPLOYMENT[@]} )) || die "no regions named: regions.sh start us eu (or make up REGIONS=\"us eu\")"
  local id seen=" "
  for id in "${DEPLOYMENT[@]}"; do
    [[ "$id" =~ ^[a-z][a-z0-9-]{0,15}$ ]] || die "region '$id': an id is [a-z][a-z0-9-]{0,15}"
    [[ "$id" != local ]] || die "region 'local' is the default stack's (make up): name the regions otherwise"
    [[ "$seen" != *" $id "* ]] || die "region '$id' is listed twice"
    seen+="$id "
  done
}

# slot REGION: its port slot, 1 for the first region listed (ports + 1000), 2 for the next...
# A region started before keeps its first slot (recorded in its directory).
slot() {
  local recorded="$REGIONS_DIR/$1/slot" i
  if [[ -f "$recorded" ]]; then cat "$recorded"; return; fi
  for i in "${!DEPLOYMENT[@]}"; do
    if [[ "${DEPLOYMENT[$i]}" == "$1" ]]; then echo $(( i + 1 )); return; fi
  done
  die "region '$1' is not one of: ${DEPLOYMENT[*]}"
}

# port BASE_KEY REGION: one of REGION's ports (BASE_KEY from PORTS).
port() {
  local var="TENANTRY_${1}_PORT"
  echo $(( ${!var} + $(slot "$2") * TENANTRY_REGION_PORT_STEP ))
}

# Every region with its services' public base URLs: TENANTRY_REGIONS (the region contract).
regions_json() {
  local id svc json="" urls
  for id in "${DEPLOYMENT[@]}"; do
    urls=""
    for svc in "${SERVICES[@]}"; do
      urls+="${urls:+,}\"$svc\":\"http://127.0.0.1:$(port "${svc^^}" "$id")\""
    done
    json+="${json:+,}{\"id\":\"$id\",\"jurisdiction\":\"${id^^}\",\"urls\":{$urls}}"
  done
  echo "[$json]"
}

# settings REGION: what sets REGION apart from the default stack, KEY=VALUE per line.
settings() {
  local id="$1" key directory="${DEPLOYMENT[0]}"
  echo "TENANTRY_LOCAL_DIR=$REGIONS_DIR/$id"
  echo "TENANTRY_REGION=$id"
  for key in "${PORTS[@]}"; do echo "TENANTRY_${key}_PORT=$(port "$key" "$id")"; done
  echo "TENANTRY_REGIONS=$(regions_json)"
  echo "TENANTRY_DIRECTORY_REGION=$directory"
  echo "TENANTRY_DIRECTORY_URL=http://127.0.0.1:$(port TENANCY "$directory")"
  echo "TENANTRY_DIRECTORY_SECRET=$TENANTRY_DIRECTORY_SECRET"
  # Each region its own master key (derived from the stack's, so nothing to configure): a
  # secret or data key sealed in one region opens nothing in another, as in production.
  echo "TENANTRY_MASTER_KEY=$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).decode())' \
    "$TENANTRY_MASTER_KEY:$id")"
}

# in_region REGION COMMAND...: COMMAND with REGION's settings exported (in a subshell).
in_region() {
  local id="$1" text lines; shift
  slot "$id" >/dev/null  # an unknown region stops here (inside $(...) its error would be lost)
  text="$(settings "$id")"
  mapfile -t lines <<< "$text"
  ( export "${lines[@]}"; "$@" )
}

# every_region COMMAND...: COMMAND in each region at once (in_region); its messages go to
# stderr tagged with the region, its output nowhere; fails when any of them fails. (A plain
# pipe: with `2> >(sed ...)` bash leaves the substitution's fd open in the servers started,
# so sed, and whoever reads our stderr, would wait for them to exit.)
every_region() {
  local id pids=() pid failed=0
  for id in "${DEPLOYMENT[@]}"; do
    in_region "$id" "$@" 2>&1 >/dev/null | sed -u "/^\[tenantry/!s/^/[tenantry $id] /" >&2 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return $failed
}

# Every port of the default stack and of each region differs, and stays below the ephemeral
# range (an outgoing connection could hold it). The scheme guarantees it (stack.env); this
# says so loudly if a changed port or step breaks it.
check_ports() {
  local -A owner=()
  local stack key port offset slot
  for stack in default "${DEPLOYMENT[@]}"; do
    offset=0
    if [[ $stack != default ]]; then slot="$(slot "$stack")"; offset=$(( slot * TENANTRY_REGION_PORT_STEP )); fi
    for key in "${PORTS[@]}"; do
      local var="TENANTRY_${key}_PORT"
      port=$(( ${!var} + offset ))
      local ports=("$port")
      # A service's worker answers health checks 100 above its api (services.sh).
      [[ " ${SERVICES[*]^^} " == *" $key "* ]] && ports+=($(( port + 100 )))
      for port in "${ports[@]}"; do
        (( port < EPHEMERAL_PORTS_START )) \
          || die "region $stack: port $port ($key) is in the ephemeral range: list fewer regions or lower TENANTRY_REGION_PORT_STEP"
        [[ -z "${owner[$port]:-}" ]] || die "port $port is both ${owner[$port]}'s and $stack $key's: change TENANTRY_REGION_PORT_STEP"
        owner[$port]="$stack $key"
      done
    done
  done
}

start() {
  deployment "$@"
  local i id
  for i in "${!DEPLOYMENT[@]}"; do
    id="${DEPLOYMENT[$i]}"
    if [[ -f "$REGIONS_DIR/$id/slot" && "$(cat "$REGIONS_DIR/$id/slot")" != $(( i + 1 )) ]]; then
      die "region $id was first started in position $(cat "$REGIONS_DIR/$id/slot") (its ports and Kafka metadata say so): list it there, or remove $REGIONS_DIR/$id to start it afresh"
    fi
  done
  check_ports
  for i in "${!DEPLOYMENT[@]}"; do
    id="${DEPLOYMENT[$i]}"
    mkdir -p "$REGIONS_DIR/$id"
    echo $(( i + 1 )) > "$REGIONS_DIR/$id/slot"
  done
  printf '%s\n' "${DEPLOYMENT[@]}" > "$DEPLOYMENT_FILE"
  # Every region at once: much of a start is waiting (initdb, the JVM, Kafka's election,
  # /readyz polls). A region's services need no other region to start: a directory that
  # is not up yet only delays the replica's first pull.
  every_region bash "$HERE/stack.sh" start-all || die "a region's servers did not start (see above)"
  every_region bash "$HERE/services.sh" start >/dev/null || die "a region's services did not start (see above)"
  urls
}

stop() {
  deployment "$@"
  every_region bash -c "bash '$HERE/services.sh' stop; bash '$HERE/stack.sh' stop-all"
}

status() {
  deployment "$@"
  local id rc=0
  for id in "${DEPLOYMENT[@]}"; do
    echo "== region $id (ports +$(( $(slot "$id") * TENANTRY_REGION_PORT_STEP )), $REGIONS_DIR/$id)"
    in_region "$id" bash "$HERE/stack.sh" status || rc=1
    in_region "$id" bash "$HERE/services.sh" status || rc=1
  done
  return $rc
}

urls() {
  (( ${#DEPLOYMENT[@]} )) || deployment "$@"
  local id
  for id in "${DEPLOYMENT[@]}"; do in_region "$id" bash "$HERE/services.sh" urls; done
}

# vars REGION: the region's whole stack settings (stack.env, its ports, the region
# contract's variables), as the test fixtures read them.
vars() {
  deployment
  in_region "$1" bash -c 'for key in $(compgen -e); do [[ $key == TENANTRY_* ]] && echo "$key=${!key}"; done; true'
}

# One start or stop at a time (two test sessions may both find the regions down): the
# second waits, then finds them running. -o: the servers started must not hold the lock.
locked() {
  if [[ -n "${REGIONS_SH_LOCKED:-}" ]]; then "$@"; return; fi
  mkdir -p "$REGIONS_DIR"
  REGIONS_SH_LOCKED=1 flock -o "$REGIONS_DIR/.lock" bash "${BASH_SOURCE[0]}" "$@"
}

case "${1:-}" in
  start) shift; locked start "$@" ;;
  stop) shift; locked stop "$@" ;;
  status) shift; status "$@" ;;
  urls) shift; urls "$@" ;;
  vars) vars "${2:?usage: $0 vars REGION}" ;;
  env) deployment; in_region "${2:?usage: $0 env REGION SERVICE}" bash "$HERE/services.sh" env "${3:?usage: $0 env REGION SERVICE}" ;;
  exec) deployment; id="${2:?usage: $0 exec REGION COMMAND...}"; shift 2; in_region "$id" "$@" ;;
  *) echo "usage: $0 {start|stop|status|urls} [REGION...] | vars REGION | env REGION SERVICE | exec REGION COMMAND..." >&2; exit 2 ;;
esac
