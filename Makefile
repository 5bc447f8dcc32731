# Two commands on a fresh machine: `make run` runs the system, `make test` runs every test.

CARGO ?= cargo

.PHONY: build release test test-deps chaos fuzz run bench lint fmt clean-dev k8s interface image new-function validate-k8s

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

# Integration tests start the real binaries: build them first, then run every test; then render
# and validate the Kubernetes manifests, then two minutes of chaos, and two more with the ledger
# on two PostgreSQL servers (one stopped at a time). The tests that start a private 3-node
# JetStream cluster (fsync on every write, every node on this machine's disk) run after the
# others, one at a time, so that three fsyncing servers and the concurrent tests do not slow each
# other on a 2-core host. (The 120 s stalls once seen there, twice in CI, were the test's event
# reader, an async-nats ordered consumer, since replaced: libs/client/src/follow.rs.)
CLUSTER_TESTS = binary(cluster) | test(a_restarted_cluster_node_is_current_only_once_its_streams_caught_up)
test: test-deps build
	$(CARGO) nextest run --workspace --no-fail-fast -E 'not ($(CLUSTER_TESTS))'
	$(CARGO) nextest run --workspace --no-fail-fast --test-threads 1 -E '$(CLUSTER_TESTS)'
	$(MAKE) validate-k8s
	$(MAKE) chaos
	$(MAKE) chaos SHARDS=2

# What the tests need on a fresh machine: the three servers running, nextest, tmux, kubectl and a
# virtual environment with kubernetes-validate (scripts/test-deps.sh says what it would need root for).
test-deps:
	bash scripts/test-deps.sh

# Faults (kill -9, SIGTERM, nats-server restart, PostgreSQL down 30 s, Redis restarted empty,
# connections cut) while a mixed load runs on private servers, then every command checked.
# 2 minutes by default (part of `make test`); `make chaos DURATION=30m` soaks; CHAOS_SEED=N
# replays a schedule; RATE=N commands/s (150). CLUSTER=3: NATS as in production, three nodes with
# R3 streams and fsync on every write, and the cluster's faults (a node killed, leaders stepped
# down, a node cut off, a rolling restart). SHARDS=2: the ledger on two private PostgreSQL
# servers, every sharded function run per shard, one shard's PostgreSQL stopped at a time (no
# bonus grants, which run on one shard only). Debug binaries; CHAOS_PROFILE=release for the
# release ones.
CHAOS_PROFILE ?= debug
chaos:
	$(CARGO) build --workspace --bins $(if $(filter release,$(CHAOS_PROFILE)),--release)
	./target/$(CHAOS_PROFILE)/chaos $(if $(DURATION),--duration $(DURATION)) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) $(if $(RATE),--rate $(RATE)) $(if $(CLUSTER),--cluster $(CLUSTER)) $(if $(SHARDS),--shards $(SHARDS))

# Hostile input against every function (walletctl/tests/hostile.rs): 10,000 generated hostile
# messages per command subject mixed with valid deposits; prints what became of them, the
# functions' peak memory, and the seed (HOSTILE_SEED=N replays it). Part of `make test` with
# 2,500 per subject.
HOSTILE_PER_SUBJECT ?= 10000
fuzz: build
	HOSTILE_PER_SUBJECT=$(HOSTILE_PER_SUBJECT) $(CARGO) nextest run -p walletctl --test hostile --no-capture

# Every overlay rendered (kubectl kustomize) and every object validated against the Kubernetes
# schemas and KEDA's ScaledObject schema (kubectl and kubernetes-validate, from `make test-deps`).
validate-k8s: test-deps
	.dev/venv/bin/python .ci/validate-k8s

# NATS, PostgreSQL and Redis (private ones under .dev/ when the usual ones are not up),
# `walletctl setup`, then every function with prefixed logs. Ctrl-C stops everything.
run: release
	bash scripts/run.sh

# The standard load profiles (raw ceiling, deposit-max, per-message, deposit-peak, mixed-peak,
# mixed-all-peak, flash-bonus, quiet, history, shards, flash-bonus-shards), then the production shape's (raw-r3, deposit-max-r3, quiet-r3,
# mixed-r3 on a 3-node cluster with fsync on every write), each on a fresh `bench` namespace;
# writes bench/RESULTS.md. About 80 minutes (history seeds 50,000,000 commands).
bench: release
	bash scripts/bench.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-dev:
	rm -rf .dev

# Regenerate k8s/base/functions/ from every functions/*/function.toml.
k8s: build
	./target/debug/walletctl k8s

# Regenerate asyncapi.yaml and schemas/ from every function's payload types (each binary's
# --interface) and function.toml; a test fails when the committed ones are stale.
interface: build
	./target/debug/walletctl interface

# The container image of every binary (needs Docker with BuildKit).
image:
	docker build -t wallet-functions:latest .

# Scaffold a new function: make new-function NAME=withdraw, consuming wallet.withdraw, or
# make new-function NAME=payout-ack SUBJECT='payout.*.ack'
new-function: build
	@test -n "$(NAME)" || { echo "usage: make new-function NAME=<name> [SUBJECT=<subject>]"; exit 2; }
	./target/debug/walletctl new-function $(NAME) $(if $(SUBJECT),--subject '$(SUBJECT)')
