#!/usr/bin/env bash
# `make bench`: the standard profiles, each against freshly set-up streams, database and Redis
# keys in the namespace `bench` (its database `wallet_bench` on DATABASE_URL's server; the history
# profile's fresh side in `benchfresh`), with
# the function processes each profile names started here from target/release. The servers are
# the running stack's (started privately when not reachable, as `make run` does). Every profile
# writes its JSON summary to bench/runs/; bench/RESULTS.md is rendered from them.
#
#   PROFILES="raw deposit-max" make bench     # a subset (rendered to bench/runs/RESULTS.md)
#   PEAK_DURATION=1m make bench                # shorter peak profiles (the targets say 5m)
#   HISTORY_COMMANDS=5000000 make bench        # a smaller history (the target says 50,000,000)
#
# The -r3 profiles run on the production shape: the 3-node cluster of `make run CLUSTER=3`
# (started here when it is not up; fsync on every write), streams with 3 replicas.
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
ALL="raw deposit-max per-message deposit-peak mixed-peak mixed-all-peak flash-bonus quiet history shards flash-bonus-shards raw-r3 deposit-max-r3 quiet-r3 mixed-r3"
PROFILES="${PROFILES:-$ALL}"
# bench/RESULTS.md is one run of every profile; a subset is rendered beside its runs.
RESULTS=bench/RESULTS.md
[ "$PROFILES" = "$ALL" ] || RESULTS="$OUT/RESULTS.md"
PEAK_DURATION="${PEAK_DURATION:-5m}"
# Runs of raw and of deposit-max, whose ratio is a target.
RUNS="${RAW_RUNS:-3}"
# The mix's commands make 2.75 JetStream messages each on average (a deposit or a grant: the
# command and its event; a transfer: the command, its pending event, the provider request, the
# provider's ack and the final event): 8,333 messages/s is 3,030 commands/s.
MIX="deposit=60,transfer=25,bonus=15"
MIX_RATE=3030
# Every kind of command (transfers in and withdrawals too: 3.2 messages per command), at the
# mixed-peak rate in commands/s.
MIX_ALL="deposit=45,transfer=20,bonus=15,withdraw=10,transfer_in=10"

# The NATS the profiles use: the one server (NATS_URL), or for the -r3 profiles the cluster.
single_url="$NATS_URL"
cluster_url=""
on_cluster() {
  if [ -z "$cluster_url" ]; then start_cluster; cluster_url="$NATS_URL"; fi
  export NATS_URL="$cluster_url" STREAM_REPLICAS=3
}
on_single() {
  export NATS_URL="$single_url"; unset STREAM_REPLICAS
}
# The shards profile's server: one pinned current nats-server (scripts/nats-bin.sh) on port 4250,
# since a consumer per shard filters several subjects (nats-server 2.10 or later).
pinned_url=""
pinned_pid=""
on_pinned() {
  if [ -z "$pinned_url" ]; then
    local bin store
    bin="$(bash scripts/nats-bin.sh)"
    store="$DEV/nats-pinned"
    rm -rf "$store"
    setsid "$bin" -a 127.0.0.1 -p 4250 -js -sd "$store" >"$DEV/nats-pinned.log" 2>&1 &
    pinned_pid=$!
    wait_up 127.0.0.1 4250 nats-pinned
    pinned_url="nats://127.0.0.1:4250"
  fi
  export NATS_URL="$pinned_url"; unset STREAM_REPLICAS
}

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
  [ -z "$pinned_pid" ] || kill -TERM "$pinned_pid" 2>/dev/null || true
  for ns in bench benchfresh; do
    in_namespace "$ns"
    "$BIN/walletctl" teardown --confirm "$ns" >/dev/null 2>&1 || true
  done
  stop_servers
}
trap cleanup EXIT

# fresh: an empty namespace (the current one), set up from streams.toml.
fresh() {
  "$BIN/walletctl" teardown --confirm "$WALLET_NAMESPACE" >/dev/null
  "$BIN/walletctl" setup >/dev/null
}

# in_namespace NS: the namespace and database the next functions and loads use (`bench`, or the
# history profile's fresh side `benchfresh`).
in_namespace() {
  export WALLET_NAMESPACE="$1" DATABASE_URL="${DATABASE_URL%/*}/wallet_$1"
}

# start NAME [VAR=value ...]: one process of function NAME with extra environment.
port=9400
start() {
  local name="$1"; shift
  env "$@" HTTP_ADDR="127.0.0.1:$port" "$BIN/$name" >"$OUT/$name.log" 2>&1 &
  pids+=($!); watch+=(--watch "$name=$!")
  port=$((port + 1))
}

# start_mix: one process of every function the mix's commands reach; start_mix all: of every
# function the mix-all's reach.
start_mix() {
  for f in deposit transfer-out provider-ack bonus-grant; do start "$f"; done
  [ "${1:-}" != all ] || for f in transfer-in withdraw payout-ack; do start "$f"; done
}

# What a run prints on stderr is kept in <profile>.err: a run that ends without a summary (an
# error, not a failed verification) is reported in the results by its last line. With RUN=k set,
# the files are <profile>.k.json and <profile>.k.err: one run of several.
load() {
  local profile="$1"; shift
  local file="$OUT/$profile${RUN:+.$RUN}"
  echo "bench: $profile${RUN:+ (run $RUN)}"
  if ! "$BIN/walletctl" load --profile "$profile" --json --drain-timeout 30m "${watch[@]}" \
    --cpu nats-server --cpu postgres --cpu redis-server "$@" \
    >"$file.json" 2> >(tee "$file.err" >&2); then
    if [ -s "$file.json" ]; then
      echo "bench: $profile: verification FAILED (see $file.json)"
    else
      echo "bench: $profile: ended without a summary (see $file.err)"
    fi
  fi
  stop_functions
}

# probe RATE: one minute of the mix at RATE on the cluster; true if it held (walletctl bench
# holds: every command sent at the rate, p99 < 250 ms, lag flat, verified).
probe() {
  fresh
  start_mix
  RUN="$1" load mixed-r3-probe --mix "$MIX" --rate "$1" --duration "${PROBE_DURATION:-1m}" --users 10000
  local line
  line="$("$BIN/walletctl" bench holds "$OUT/mixed-r3-probe.$1.json" 2>&1)" && held=0 || held=$?
  echo "$1/s $line" | tee -a "$OUT/mixed-r3-search.txt"
  return "$held"
}

for profile in $PROFILES; do
  case "$profile" in
    *-r3) on_cluster ;;
    *) on_single ;;
  esac
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
      start_mix
      load mixed-peak --mix "$MIX" --rate "$MIX_RATE" --duration "$PEAK_DURATION" --users 10000 ;;
    mixed-all-peak)
      fresh
      start_mix all
      load mixed-all-peak --mix "$MIX_ALL" --rate "$MIX_RATE" --duration "$PEAK_DURATION" --users 10000 ;;
    flash-bonus)
      fresh; start bonus-grant
      load flash-bonus --mix bonus=100 --count 100000 --envelopes 10000 ;;
    quiet|quiet-r3)
      # A night's load: what one deposit waits, publish to event.
      fresh; start deposit
      load "$profile" --rate 100 --duration "${QUIET_DURATION:-2m}" --users 10000 ;;
    history)
      # Months of remembered ids: deposit-max on a database seeded with HISTORY_COMMANDS deposits
      # (scripts/seed-history.sql: bulk SQL, not the functions) against a fresh database, run
      # after run in turn: this host's throughput drifts by tens of percent over minutes
      # (checkpoints, the seed's writes still being flushed), and all fresh runs first, then all
      # seeded ones, measured that drift (0.52 in one such run; 0.9 to 1.1 in turn).
      fresh
      echo "bench: history: seeding ${HISTORY_COMMANDS:-50000000} remembered deposits"
      { time psql -q -X "$DATABASE_URL" -v commands="${HISTORY_COMMANDS:-50000000}" \
          -v users=1000000 -f scripts/seed-history.sql; } >"$OUT/history-seed.txt" 2>&1
      for run in $(seq 1 "$RUNS"); do
        in_namespace benchfresh
        fresh; start deposit
        RUN=$run load history-fresh --count 300000 --users 10000
        in_namespace bench
        # Each run adds to the history: nothing is torn down between them. The audit reads the
        # whole database (minutes at this size): after the last run only.
        start deposit
        RUN=$run load history --count 300000 --users 10000 $([ "$run" = "$RUNS" ] || echo --no-audit)
      done
      in_namespace benchfresh
      "$BIN/walletctl" teardown --confirm benchfresh >/dev/null
      in_namespace bench ;;
    shards)
      # The cost of sharding itself (docs/sharding.md): deposit-max with 1, 2 and 4 shards, each
      # a database of its own on this one PostgreSQL, one deposit process per shard. Every shard
      # shares the same two cores, so the rate cannot grow with shards here; what must stay flat
      # is the work per deposit, which RESULTS.md's "Sharding" table divides out.
      on_pinned
      for n in 1 2 4; do
        # Shards a, b, …, each a database wallet_bench_<name> on DATABASE_URL's server.
        names=(a b c d e f g h); names=("${names[@]:0:$n}")
        "$BIN/walletctl" shards even \
          $(for name in "${names[@]}"; do echo "${DATABASE_URL%/*}/wallet_bench_$name"; done) \
          >"$OUT/shards-$n.toml"
        export SHARDS_FILE="$OUT/shards-$n.toml"
        fresh
        for name in "${names[@]}"; do
          start deposit SHARD="$name" DATABASE_URL="${DATABASE_URL%/*}/wallet_bench_$name"
          # Each shard's process watched by a name of its own.
          watch[${#watch[@]}-1]="deposit-$name=${pids[${#pids[@]}-1]}"
        done
        load "shards-$n" --count 300000 --users 10000
        "$BIN/walletctl" teardown --confirm "$WALLET_NAMESPACE" >/dev/null
        unset SHARDS_FILE
      done
      # The namespace as the other profiles leave it (the results read its server's version).
      fresh ;;
    flash-bonus-shards)
      # flash-bonus on two shards (databases of this one PostgreSQL, as in shards): each shard's
      # bonus-grant within its quota of the budget, and the rebalancer moving quota between
      # them (docs/sharding.md, step 5). The verification counts exactly the envelopes.
      on_pinned
      "$BIN/walletctl" shards even "${DATABASE_URL%/*}/wallet_bench_a" "${DATABASE_URL%/*}/wallet_bench_b" \
        >"$OUT/shards-bonus.toml"
      export SHARDS_FILE="$OUT/shards-bonus.toml"
      fresh
      for name in a b; do
        start bonus-grant SHARD="$name" DATABASE_URL="${DATABASE_URL%/*}/wallet_bench_$name"
        watch[${#watch[@]}-1]="bonus-grant-$name=${pids[${#pids[@]}-1]}"
      done
      "$BIN/walletctl" campaign rebalance --every 1s >"$OUT/rebalance.log" 2>&1 &
      pids+=($!); watch+=(--watch "rebalance=$!")
      load flash-bonus-shards --mix bonus=100 --count 100000 --envelopes 10000
      "$BIN/walletctl" teardown --confirm "$WALLET_NAMESPACE" >/dev/null
      unset SHARDS_FILE
      fresh ;;
    raw-r3)
      echo "bench: raw-r3"
      "$BIN/walletctl" bench raw --count 30000 --runs "$RUNS" --json >"$OUT/raw-r3.json" ;;
    deposit-max-r3)
      for run in $(seq 1 "$RUNS"); do
        fresh; start deposit
        RUN=$run load deposit-max-r3 --count 30000 --users 10000
      done ;;
    mixed-r3)
      # The highest rate of the mix the cluster holds, found: one-minute probes from 100/s,
      # doubled while they hold, then two halvings between the last that held and the first
      # that did not; the rate found is then run for PEAK_DURATION, and stepped down by a tenth
      # (at most three times) if that run does not hold.
      : >"$OUT/mixed-r3-search.txt"
      lo=0; hi=100
      while probe "$hi"; do lo=$hi; hi=$((hi * 2)); done
      for _ in 1 2; do
        mid=$(((lo + hi) / 2))
        [ "$mid" -gt "$lo" ] || break
        if probe "$mid"; then lo=$mid; else hi=$mid; fi
      done
      for _ in 1 2 3; do
        [ "$lo" -gt 0 ] || break
        fresh
        start_mix
        load mixed-r3 --mix "$MIX" --rate "$lo" --duration "$PEAK_DURATION" --users 10000
        "$BIN/walletctl" bench holds "$OUT/mixed-r3.json" >/dev/null 2>&1 && break
        echo "$lo/s did not hold for $PEAK_DURATION" >>"$OUT/mixed-r3-search.txt"
        lo=$((lo * 9 / 10))
      done ;;
    *) echo "bench: unknown profile $profile" >&2; exit 2 ;;
  esac
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
"$BIN/walletctl" bench report "$OUT" --commit "$commit" >"$RESULTS"
# The profile findings, written by hand, follow the figures.
[ -f bench/ANALYSIS.md ] && { echo; cat bench/ANALYSIS.md; } >>"$RESULTS"
echo "bench: wrote $RESULTS"
sed -n '/^| profile/,/^## Profiles/p' "$RESULTS" | head -n -1
