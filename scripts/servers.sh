# Sourced by run.sh and bench.sh: NATS, PostgreSQL and Redis where NATS_URL, DATABASE_URL and
# REDIS_URL point (defaults: the usual local ports); any of them that is not reachable is started
# privately from the installed binaries, with its data under .dev/. `stop_servers` stops what
# this started.
DEV="$PWD/.dev"
mkdir -p "$DEV"

export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/wallet}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

started=()

# host and port of a URL (first server of a list; default port when the URL has none)
hostport() {
  local rest="${1#*://}"; rest="${rest%%,*}"; rest="${rest##*@}"; rest="${rest%%/*}"
  case "$rest" in *:*) echo "${rest%:*} ${rest##*:}" ;; *) echo "$rest $2" ;; esac
}
up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || {
    echo "run: $1 is not installed: apt-get install $2" >&2; exit 1; }
}
wait_up() {
  for _ in $(seq 1 100); do up "$1" "$2" && return 0; sleep 0.1; done
  echo "run: $3 did not start on $1:$2 (see $DEV/$3.log)" >&2; exit 1
}

# CLUSTER=3: a JetStream cluster of three nodes of the pinned current nats-server
# (scripts/nats-bin.sh) from nats/cluster.conf, on 127.0.0.1 ports 4231-4233 (clients),
# 6231-6233 (routes) and 8231-8233 (monitoring), stores under .dev/cluster/, fsync on every write;
# streams get 3 replicas. Nodes already up are kept, as the single server is.
start_cluster() {
  local bin routes="" i
  bin="$(bash scripts/nats-bin.sh)"
  for i in 1 2 3; do routes+="${routes:+,}nats://127.0.0.1:423$i"; done
  for i in 1 2 3; do
    up 127.0.0.1 "423$i" && continue
    echo "run: starting cluster node n$i on 127.0.0.1:423$i (data in .dev/cluster/n$i)"
    NATS_NODE="n$i" NATS_PORT="423$i" NATS_HTTP_PORT="823$i" NATS_CLUSTER_PORT="623$i" \
      NATS_CLUSTER_ADVERTISE="127.0.0.1:623$i" \
      NATS_STORE="$DEV/cluster/n$i" NATS_ROUTE_1=nats-route://127.0.0.1:6231 \
      NATS_ROUTE_2=nats-route://127.0.0.1:6232 NATS_ROUTE_3=nats-route://127.0.0.1:6233 \
      setsid "$bin" -c nats/cluster.conf >"$DEV/cluster-n$i.log" 2>&1 &
    started+=($!)
  done
  for i in 1 2 3; do wait_up 127.0.0.1 "423$i" "cluster-n$i"; done
  # JetStream answers once the nodes elected a meta leader (seconds after they start).
  local jsz
  for _ in $(seq 1 150); do
    jsz="$( (exec 3<>/dev/tcp/127.0.0.1/8231; printf 'GET /jsz HTTP/1.0\r\n\r\n' >&3; cat <&3) 2>/dev/null || true)"
    grep -q '"leader": *"n' <<<"$jsz" && break
    sleep 0.2
  done
  export NATS_URL="$routes" STREAM_REPLICAS=3
}

if [ "${CLUSTER:-}" = 3 ]; then
  start_cluster
elif [ -n "${CLUSTER:-}" ]; then
  echo "run: CLUSTER=$CLUSTER: only a cluster of 3 is supported" >&2; exit 64
fi

read -r nh np < <(hostport "$NATS_URL" 4222)
if ! up "$nh" "$np"; then
  need nats-server nats-server
  echo "run: starting a private nats-server on $nh:$np (data in .dev/nats)"
  # In a session of its own, as the functions: Ctrl-C must not stop it before them.
  setsid nats-server -a "$nh" -p "$np" -js -sd "$DEV/nats" >"$DEV/nats.log" 2>&1 &
  started+=($!); wait_up "$nh" "$np" nats
fi

read -r ph pp < <(hostport "$DATABASE_URL" 5432)
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
pg_private=false
if ! up "$ph" "$pp"; then
  need "$PGBIN/initdb" postgresql
  echo "run: starting a private PostgreSQL on $ph:$pp (data in .dev/pg)"
  if [ ! -d "$DEV/pg" ]; then
    "$PGBIN/initdb" -D "$DEV/pg" -U postgres -A trust >"$DEV/pg-init.log"
  fi
  "$PGBIN/pg_ctl" -D "$DEV/pg" -l "$DEV/pg.log" -o "-h $ph -p $pp -k $DEV" start >/dev/null
  pg_private=true; wait_up "$ph" "$pp" pg
fi

read -r rh rp < <(hostport "$REDIS_URL" 6379)
if ! up "$rh" "$rp"; then
  need redis-server redis-server
  echo "run: starting a private redis-server on $rh:$rp (keeps nothing on disk)"
  setsid redis-server --bind "$rh" --port "$rp" --save "" --appendonly no >"$DEV/redis.log" 2>&1 &
  started+=($!); wait_up "$rh" "$rp" redis
fi

stop_servers() {
  for p in "${started[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if $pg_private; then "$PGBIN/pg_ctl" -D "$DEV/pg" stop -m fast >/dev/null || true; fi
}
