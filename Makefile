# gateway-agent: the two commands of the README, and the rest.
#   make demo    the two-zone lab demo (as root)
#   make test    install what the tests need, prove setup installs it all (tools-check,
#                setup-test), then lint and run every test (as root)
#   make bench   the benchmarks' figures
#   make soak    random faults for SOAK_SECONDS (default 600), with the agents' RSS and CPU
# Every lab target honours GATEWAY_LAB_PROFILE (fast, the default; aws: the lab behaves like
# AWS, README "Lab profiles"), e.g. `GATEWAY_LAB_PROFILE=aws make matrix`.
#   make package the .deb and .rpm (see packaging/Makefile.inc for the packaging targets)

CACHE ?= $(HOME)/.cache/gateway-agent
# Kept outside the clone so CI's fresh clones reuse the build; a fresh machine just builds it.
export CARGO_TARGET_DIR ?= $(CACHE)/target
export GATEWAY_LAB_PYTHON ?= $(CACHE)/venv/bin/python
CARGO ?= cargo
# Two cores: two lab tests at a time keep the machine responsive and the timings honest.
TEST_THREADS ?= 2

.PHONY: all setup setup-lab tools-check setup-test build demo test lint unit lab-test matrix aws-smoke soak deny fuzz-smoke bench bench-failover bench-drain bench-budget bench-fleet clean-lab

all: build

setup:
	./scripts/setup.sh

# Only what the lab needs (no cargo tools to compile): the demo's setup.
setup-lab:
	./scripts/setup.sh lab

# Every command the Makefile, its scripts, the lab and the tests run is on this machine; the
# list is derived from them (scripts/check-tools.py --list shows it). ~2 s.
tools-check:
	python3 scripts/check-tools.py

# The proof on a fresh machine: scripts/setup.sh in a copy of a debootstrapped Debian root, then
# tools-check inside it. ~1.5 min warm (downloads cached), ~3 cold.
setup-test:
	./scripts/test-setup.sh

build:
	$(CARGO) build --workspace --locked

demo: setup-lab build
	$(CARGO_TARGET_DIR)/debug/gwlab demo --agent $(CARGO_TARGET_DIR)/debug/gateway-agent

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	python3 packaging/check-iam.py

unit:
	$(CARGO) test --workspace --locked --lib --bins

lab-test: clean-lab
	$(CARGO) test --workspace --locked --tests -- --test-threads $(TEST_THREADS)

# The fault matrix (tests/matrix/) is one of the test binaries: it prints its table.
test: setup tools-check setup-test lint iam-reference deny examples-check ami-check package-test
	$(CARGO) test --workspace --locked -- --test-threads $(TEST_THREADS)
	$(MAKE) --no-print-directory clean-lab
	$(MAKE) --no-print-directory aws-smoke
	$(MAKE) --no-print-directory fuzz-smoke

# The fault matrix alone; CASE=<text>[,<text>] picks cases by name; GATEWAY_LAB_PROFILE=aws
# runs it in the lab that behaves like AWS (~1 h instead of ~12 min).
matrix: setup
	$(CARGO) test --locked --test matrix -- $(if $(CASE),--case "$(CASE)")

# A few matrix rows under the aws profile, so that profile cannot rot unnoticed (~4 min).
AWS_SMOKE_CASES ?= peer agent killed -9,link cut between gateways,IMDS answering 500
aws-smoke: setup
	GATEWAY_LAB_PROFILE=aws $(CARGO) test --locked --test matrix -- --case "$(AWS_SMOKE_CASES)"

# Random faults every few seconds against the release build: loss, route changes, invariant
# violations, RSS and CPU. ~SOAK_SECONDS + 1 min.
SOAK_SECONDS ?= 600
soak: setup
	$(CARGO) build --release --locked -p gateway-agent
	GATEWAY_AGENT_BIN=$(CARGO_TARGET_DIR)/release/gateway-agent $(CARGO) test --locked --test matrix -- --soak $(SOAK_SECONDS)

# Licenses, bans (no OpenSSL), sources; advisories where github.com is reachable (deny.toml).
deny:
	./scripts/deny.sh

# Every fuzz target for FUZZ_SECONDS from its seeds (fuzz/README.md has the long runs).
FUZZ_SECONDS ?= 10
fuzz-smoke:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

bench: setup build
	$(CARGO_TARGET_DIR)/debug/gwlab bench
	$(CARGO_TARGET_DIR)/debug/gwlab bench-boot --agent $(CARGO_TARGET_DIR)/debug/gateway-agent
	$(MAKE) --no-print-directory bench-failover
	$(MAKE) --no-print-directory bench-drain
	$(MAKE) --no-print-directory bench-budget

# API calls per gateway-hour by action and state (steady, partition, hung peer) and per
# takeover + hand-back. BUDGET_MINUTES per state (10 by default: ~35 min in all).
BUDGET_MINUTES ?= 10
bench-budget: setup build
	$(CARGO_TARGET_DIR)/debug/gwlab bench-budget --agent $(CARGO_TARGET_DIR)/debug/gateway-agent --minutes $(BUDGET_MINUTES)

# 5 groups x 3 zones = 15 gateways in one account under the aws profile's shared buckets and
# other tools' load: steady-state calls and throttling for FLEET_MINUTES, then one takeover per
# group at once, against the fault matrix's budget for a terminated peer.
FLEET_MINUTES ?= 10
bench-fleet: setup build
	GATEWAY_LAB_PROFILE=aws $(CARGO_TARGET_DIR)/debug/gwlab bench-fleet --agent $(CARGO_TARGET_DIR)/debug/gateway-agent --minutes $(FLEET_MINUTES)

# Unplanned death of a gateway: the agent against AWS's nat_monitor.sh, in the default topology
# (one table, one destination) and with 50 tables x 2 destinations per zone; each draws the
# client's packets around the death (docs/failover-*.svg, in the README). ~12 min.
bench-failover: setup build
	$(CARGO_TARGET_DIR)/debug/gwlab bench-failover --agent $(CARGO_TARGET_DIR)/debug/gateway-agent --runs 10 --tables 1 --destinations 1 --baseline-runs 3 --svg docs/failover-1-table.svg
	$(CARGO_TARGET_DIR)/debug/gwlab bench-failover --agent $(CARGO_TARGET_DIR)/debug/gateway-agent --runs 10 --tables 50 --destinations 2 --baseline-runs 3 --svg docs/failover-50-tables.svg

# Planned exits (SIGTERM, spot, ASG termination, rebalance, upgrade restart): packets lost,
# drain duration. ~5 min.
bench-drain: setup build
	$(CARGO_TARGET_DIR)/debug/gwlab bench-drain --agent $(CARGO_TARGET_DIR)/debug/gateway-agent --runs 5

# Remove what a killed lab left behind (namespaces, run dirs); never touches a live lab.
clean-lab:
	@$(CARGO) run -q -p gateway-lab --bin gwlab -- down --all

include packaging/Makefile.inc
