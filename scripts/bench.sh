#!/usr/bin/env bash
# `make bench`: the standard profiles, each against freshly set-up streams, database and Redis
# keys in the namespace `bench` (its database `wallet_bench` on DATABASE_URL's server), with
# the function processes each profile names started here from target/release. The servers are
# the running stack's (started privately when not reachable, as `make run` does). Every profile
# writes its JSON summary to bench/runs/; bench/RESULTS.md is rendered from them.
#
#   PROFILES="raw deposit-max" make bench     # a subset
#   PEAK_DURATION=1m make bench                # shorter peak profiles (the targets say 5m)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release"
source scripts/servers.sh

export WALLET_NAMESPACE=bench
export DATABASE_URL="${DATABASE_URL%/*}/wallet_bench"
export RUST_LOG="${RUST_LOG:-warn}"
OUT=bench/runs
# Results of one run only: RESULTS.md never mixes commits.
rm -rf "$OUT"; mkdir -p "$OUT"
PROFILES="${PROFILES:-raw deposit-max per-message deposit-peak mixed-peak flash-bonus quiet}"
PEAK_DURATION="${PEAK_DURATION:-5m}"
# Runs of raw and of deposit-max, whose ratio is a target.
RUNS="${RAW_RUNS:-3}"
# The mix's commands make 2.75 JetStream messages each on average (a deposit or a grant: the
# command and its event; a transfer: the command, its pending event, the provider request, the
# provider's ack and the final event): 8,333 messages/s is 3,030 commands/s.
MIX="deposit=60,transfer=25,bonus=15"
MIX_RATE=3030

pids=()
watch=()
stop_functions() {
  # (Not `wait` with no pid: that waits for the private servers too.)
  [ ${#pids[@]} -gt 0 ] || return 0
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=(); watch=()
}
cleanup() {
  stop_functions
  "$BIN/walletctl" teardown --confirm bench >/dev/null 2>&1 || true
  stop_servers
}
trap cleanup EXIT

# fresh: an empty namespace, set up from streams.toml.
fresh() {
  "$BIN/walletctl" teardown --confirm bench >/dev/null
  "$BIN/walletctl" setup >/dev/null
}

# start NAME [VAR=value ...]: one process of function NAME with extra environment.
port=9400
start() {
  local name="$1"; shift
  env "$@" HTTP_ADDR="127.0.0.1:$port" "$BIN/$name" >"$OUT/$name.log" 2>&1 &
  pids+=($!); watch+=(--watch "$name=$!")
  port=$((port + 1))
}

# What a run prints on stderr is kept in <profile>.err: a run that ends without a summary (an
# error, not a failed verification) is reported in the results by its last line. With RUN=k set,
# the files are <profile>.k.json and <profile>.k.err: one run of several.
load() {
  local profile="$1"; shift
  local file="$OUT/$profile${RUN:+.$RUN}"
  echo "bench: $profile${RUN:+ (run $RUN)}"
  if ! "$BIN/walletctl" load --profile "$profile" --json --drain-timeout 30m "${watch[@]}" "$@" \
    >"$file.json" 2> >(tee "$file.err" >&2); then
    if [ -s "$file.json" ]; then
      echo "bench: $profile: verification FAILED (see $file.json)"
    else
      echo "bench: $profile: ended without a summary (see $file.err)"
    fi
  fi
  stop_functions
}

for profile in $PROFILES; do
  case "$profile" in
    raw)
      echo "bench: raw"
      "$BIN/walletctl" bench raw --count 300000 --runs "$RUNS" --json >"$OUT/raw.json" ;;
    deposit-max)
      # As often as raw, and reported the same way (the fastest run, every rate listed): the
      # target is a ratio of the two, and one run on a shared 2-core host varies by ±20 %.
      for run in $(seq 1 "$RUNS"); do
        fresh; start deposit
        RUN=$run load deposit-max --count 300000 --users 10000
      done ;;
    per-message)
      fresh; start deposit BATCH_MAX=1
      load per-message --count "${PER_MESSAGE_COUNT:-30000}" --users 10000 ;;
    deposit-peak)
      fresh; start deposit
      load deposit-peak --rate 8333 --duration "$PEAK_DURATION" --users 10000 ;;
    mixed-peak)
      fresh
      for f in deposit transfer-out provider-ack bonus-grant; do start "$f"; done
      load mixed-peak --mix "$MIX" --rate "$MIX_RATE" --duration "$PEAK_DURATION" --users 10000 ;;
    flash-bonus)
      fresh; start bonus-grant
      load flash-bonus --mix bonus=100 --count 100000 --envelopes 10000 ;;
    quiet)
      # A night's load: what one deposit waits, publish to event.
      fresh; start deposit
      load quiet --rate 100 --duration "${QUIET_DURATION:-2m}" --users 10000 ;;
    *) echo "bench: unknown profile $profile" >&2; exit 2 ;;
  esac
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
"$BIN/walletctl" bench report "$OUT" --commit "$commit" >bench/RESULTS.md
# The profile findings, written by hand, follow the figures.
[ -f bench/ANALYSIS.md ] && { echo; cat bench/ANALYSIS.md; } >>bench/RESULTS.md
echo "bench: wrote bench/RESULTS.md"
sed -n '/^| profile/,/^## Profiles/p' bench/RESULTS.md | head -n -1
