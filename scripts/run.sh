#!/usr/bin/env bash
# `make run`: the whole system on this machine.
#
# Uses NATS, PostgreSQL and Redis where NATS_URL, DATABASE_URL and REDIS_URL point (defaults:
# the usual local ports); any of them that is not reachable is started privately from the
# installed binaries, with its data under .dev/. Then `walletctl setup`, then every function
# (one process each, logs prefixed with its name) and `walletctl provider-sim` playing the game
# providers. Ctrl-C stops the functions gracefully and then the private servers.
#
# Ctrl-C reaches the terminal's whole process group. The functions run in sessions of their own
# (setsid), so that each gets exactly one SIGTERM from `stop` (a second signal would end it at
# once, without finishing its batch); their log prefixers ignore SIGINT, so that the shutdown's
# own log lines are still shown, and are this script's own children (reading a FIFO), so that it
# waits for them to print a function's last lines before it exits and its terminal goes away.
# WALLET_BIN (default target/release) and HTTP_PORT_BASE (8081) let a test run this script on
# the debug binaries and its own ports.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${WALLET_BIN:-$PWD/target/release}"
pids=()
prefixers=()
fifos="$(mktemp -d)"
source scripts/servers.sh

stop() {
  trap - INT TERM EXIT
  echo; echo "run: stopping functions"
  # (`wait` with no pid would wait for every child, the private servers too: a setup that failed
  # before any function started hung here.)
  if [ ${#pids[@]} -gt 0 ]; then
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    # Each prefixer ends at the end of its process's output, once it printed all of it.
    wait "${prefixers[@]}" 2>/dev/null || true
  fi
  rm -rf "$fifos"
  stop_servers
  echo "run: stopped"
}

# Runs "$@" in a session of its own, its output prefixed with [$1's name].
start() {
  local name="$1"; shift
  mkfifo "$fifos/$name"
  (trap '' INT; exec sed -u "s/^/[$name] /" < "$fifos/$name") &
  prefixers+=($!)
  setsid "$@" > "$fifos/$name" 2>&1 &
  pids+=($!)
}
trap stop INT TERM EXIT

"$BIN/walletctl" setup

port="${HTTP_PORT_BASE:-8081}"
for f in functions/*/; do
  name="$(basename "$f")"
  [ -x "$BIN/$name" ] || continue
  HTTP_ADDR="127.0.0.1:$port" start "$name" "$BIN/$name"
  echo "run: $name started (health and metrics on http://127.0.0.1:$port)"
  port=$((port + 1))
done
# The game providers, simulated: transfers complete (90 %) or fail (10 %) end to end.
start provider-sim "$BIN/walletctl" provider-sim ${PROVIDER_SIM_ARGS:-}
echo "run: provider-sim started (answers provider.*.transfer and provider.*.status; flags in PROVIDER_SIM_ARGS)"
echo "run: all functions up; Ctrl-C stops everything"
wait
