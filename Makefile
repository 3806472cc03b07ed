# kvgate — the front door. `make` alone prints this help.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

ROOT := $(abspath .)
# Every build of this clone stays in its target/, so `make clean` removes them all and two
# clones never share (or overwrite) each other's .wasm. Opt-in shared cache: export
# CARGO_TARGET_DIR=/some/dir (then `make clean` leaves that directory alone).
CARGO_TARGET_DIR ?= $(ROOT)/target
export CARGO_TARGET_DIR
export CARGO_TERM_COLOR ?= never
# The .wasm (and every wasm32-wasip1 test or example) uses Wasm SIMD: Envoy's V8, wasmtime and
# node all run it, and it made a whole decision ~17 % faster in V8 (envoy-config/README.md).
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS ?= -C target-feature=+simd128
# Parallel jobs of `make test`'s build phase, shared by every cargo it runs (jobserver).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# End-to-end tests at once (libtest's default: one per core). Four at once failed a NATS
# outage scenario's convergence check on a loaded 2-core machine, so it stays at the cores.
E2E_THREADS ?= $(JOBS)

TOOLS     := $(ROOT)/target/tools
VENV      := $(TOOLS)/venv
MODEL_DIR := $(ROOT)/target/models/Qwen3-0.6B
# A second model family, so per-model tokenizers are tested too (filter/prompt tests).
LLAMA3_DIR := $(ROOT)/target/models/Llama-3
WASM      := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/kvgate_filter.wasm
HOST_PROBE_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/kvgate_host_probe.wasm
# Envoy: func-e when it is on PATH (it fetches the pinned Envoy), else the PyPI wheel's binary.
ENVOY_VERSION := 1.40.0
ifneq ($(shell command -v func-e 2>/dev/null),)
  KVGATE_ENVOY ?= func-e run
  export ENVOY_VERSION
else
  KVGATE_ENVOY ?= $(VENV)/bin/envoy
endif
export KVGATE_ENVOY
export KVGATE_WASM := $(WASM)
export KVGATE_HOST_PROBE_WASM := $(HOST_PROBE_WASM)
export KVGATE_MODEL_DIR := $(MODEL_DIR)
export KVGATE_LLAMA3_DIR := $(LLAMA3_DIR)
export KVGATE_REPO := $(ROOT)
export KVGATE_PYTHON := $(VENV)/bin/python

.PHONY: help setup build wasm test check e2e lint run bench bench-smoke fuzz fuzz-smoke soak faults-report check-deploy clean

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: $(VENV)/.done $(MODEL_DIR)/tokenizer.json $(LLAMA3_DIR)/tokenizer.json wasm-target nats-server ## Install what is missing: wasm target, Envoy, NATS, Python tools, tokenizers

.PHONY: wasm-target nats-server
wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

nats-server:
	@command -v nats-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server >/dev/null; }
	@nats-server --version

$(VENV)/.done: tests/tools/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes --only-binary :all: -r tests/tools/requirements.txt
	@$(KVGATE_ENVOY) --version 2>/dev/null | head -1 || true
	touch $@

$(MODEL_DIR)/tokenizer.json: tests/tools/fetch-model.sh
	tests/tools/fetch-model.sh $(MODEL_DIR) qwen3

$(LLAMA3_DIR)/tokenizer.json: tests/tools/fetch-model.sh
	tests/tools/fetch-model.sh $(LLAMA3_DIR) llama3

# The crates that also build for wasm32-wasip1 (clippy checks them for that target too).
WASM_CRATES := -p kvgate-core -p kvgate-prompt -p kvgate-engine -p kvgate-filter -p kvgate-host-probe

wasm: wasm-target ## Build the filter (.wasm, release) and the guest the test host's own tests run
	+cargo build --release --target wasm32-wasip1 -p kvgate-filter -p kvgate-host-probe
	@ls -l $(WASM)

# One cargo run builds every binary and every test harness of the workspace (the native
# half of `make test`'s build phase). Every target that needs a native binary goes through
# it: `cargo build --bins` alone (or `-p X`) resolves other feature sets and would build
# many dependencies a second time.
.PHONY: native
native:
	+cargo build --workspace --bins --tests

build: setup wasm native ## Build everything (filter, sidecar, tools, tests)

.PHONY: fmt-check clippy
fmt-check:
	cargo fmt --all --check

clippy: wasm-target
	+cargo clippy --workspace --all-targets -- -D warnings
	+cargo clippy --target wasm32-wasip1 $(WASM_CRATES) -- -D warnings

.PHONY: deps-check
deps-check:
	@# Only the glue crate may link proxy-wasm; the core stays free of async runtimes.
	@! cargo tree -q -p kvgate-sync -e normal | grep -q ' proxy-wasm ' || { echo "kvgate-sync links proxy-wasm" >&2; exit 1; }
	@! cargo tree -q -p kvgate-engine -e normal | grep -qE ' (proxy-wasm|tokio) ' || { echo "kvgate-engine links proxy-wasm or tokio" >&2; exit 1; }
	@! cargo tree -q -p kvgate-core -e normal | grep -qE ' (proxy-wasm|tokio|async-nats) ' || { echo "kvgate-core links a host or runtime crate" >&2; exit 1; }

lint: fmt-check clippy deps-check ## cargo fmt --check and clippy -D warnings (native and wasm32-wasip1)

check: wasm-target nats-server $(MODEL_DIR)/tokenizer.json $(LLAMA3_DIR)/tokenizer.json deps-check ## Fast inner loop: fmt, clippy (native + wasm32-wasip1), the .wasm, native unit and integration tests (no e2e)
	cargo fmt --all --check
	+cargo clippy --workspace --all-targets -- -D warnings
	+cargo clippy --target wasm32-wasip1 $(WASM_CRATES) -- -D warnings
	+cargo build --release --target wasm32-wasip1 -p kvgate-filter -p kvgate-host-probe
	+cargo test --workspace --exclude kvgate-e2e

# `--workspace --test e2e`, not `-p kvgate-e2e`: the same feature set as the workspace build,
# so no dependency is built a second time (`--exclude kvgate-e2e` keeps it too).
e2e: setup wasm native ## Only the end-to-end test binary (real Envoy + NATS, the wasmtime host)
	+cargo test --workspace --test e2e --no-fail-fast -- --test-threads=$(E2E_THREADS)

# The build phase of `make test`, in parallel: the release .wasm and the native build then
# clippy (they share target/debug), drawing on one pool of $(JOBS) jobs, so one build's
# serial tail (LTO, a big crate) overlaps with the other's work. The fuzz targets' bodies are
# part of the native build (cargo test replays their seeds and seeded mutations); the
# libFuzzer builds (cargo-fuzz, instrumented) are left to `make fuzz-smoke` / `make fuzz`.
.PHONY: test-build
test-build: wasm lint-after-native

.PHONY: lint-after-native
lint-after-native: native
	$(MAKE) --no-print-directory lint

test: setup ## Set up, then run every test (unit, golden, fuzz seeds and mutations, proxy-wasm host, real Envoy + NATS end to end, deploy checks, bench smoke run)
	$(MAKE) --no-print-directory -j$(JOBS) test-build
	cargo test --workspace --no-fail-fast --exclude kvgate-e2e
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory check-deploy
	$(MAKE) --no-print-directory bench-smoke

# RUN_ARGS picks a topology (README "Topologies"), e.g. RUN_ARGS="--prefill 1" or
# RUN_ARGS="--zmq-only --dp-size 2"; `kvgate-stack --help` lists every flag.
RUN_ARGS ?=
run: setup wasm ## Start the local stack (nats-server, kvgate-sync, 4 mock workers, Envoy + kvgate on 127.0.0.1:8080) until Ctrl-C; release builds
	+cargo build --release -p kvgate-sync -p kvgate-mock -p kvgate-stack --bins
	KVGATE_SIDECAR=$(CARGO_TARGET_DIR)/release/kvgate-sync \
	KVGATE_MOCK_WORKER=$(CARGO_TARGET_DIR)/release/mock-worker \
	  $(CARGO_TARGET_DIR)/release/kvgate-stack --dir $(ROOT)/target/run $(RUN_ARGS)

# ---- deploy/: Istio, Helm chart, Wasm OCI image (see deploy/README-istio.md) ---------------
OCI_OUT    := $(ROOT)/target/oci/kvgate-filter
DEPLOY_OUT := $(ROOT)/target/deploy-check
KVGATE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

.PHONY: oci
oci: wasm ## Package the filter as a Wasm OCI image (layout + .tar) in target/oci, no Docker
	python3 deploy/oci/build_oci.py $(WASM) $(OCI_OUT) --tag $(KVGATE_VERSION)

# The workspace build's sidecar (`cargo run -p kvgate-sync` would resolve features for that
# package alone and rebuild part of its dependencies).
SYNC := $(CARGO_TARGET_DIR)/debug/kvgate-sync

check-deploy: $(VENV)/.done oci native ## Render the chart (every example), validate against the upstream CRDs and schemas strictly, check OCI image and plugin configs
	python3 deploy/oci/check_oci.py --self-test
	python3 deploy/oci/check_oci.py $(OCI_OUT) $(WASM)
	rm -rf $(DEPLOY_OUT)
	$(VENV)/bin/python deploy/tools/render.py $(DEPLOY_OUT)/rendered --digests $(OCI_OUT).digests.json
	$(VENV)/bin/python deploy/tools/validate.py $(DEPLOY_OUT)/rendered/*.yaml
	$(VENV)/bin/python deploy/tools/check_filter_chain.py $(DEPLOY_OUT)/plugin-config $(DEPLOY_OUT)/rendered/*.yaml
	$(SYNC) check-config $(DEPLOY_OUT)/plugin-config/*.json
	@if $(SYNC) check-config deploy/tools/testdata/misspelt-plugin-config.json 2>/dev/null; then \
	  echo "check-config accepted a misspelt key" >&2; exit 1; fi
	@echo "check-deploy: ok"

# `make manifests VALUES=my-values.yaml`: the chart rendered with your values and the
# digest of the filter image `make oci` just built, for `kubectl apply` without Helm.
VALUES ?= deploy/helm/kvgate/examples/aggregated.yaml
.PHONY: manifests
manifests: $(VENV)/.done oci ## Render the chart with VALUES (a copy of an example) and the digest make oci printed → target/deploy/kvgate.yaml, for kubectl apply
	$(VENV)/bin/python deploy/tools/render.py $(DEPLOY_OUT) --digests $(OCI_OUT).digests.json \
	  --manifest $(abspath $(VALUES)) $(ROOT)/target/deploy/kvgate.yaml
# ---- end deploy/ ----------------------------------------------------------------------------

# ---- reliability: fault report and load soak (tests/e2e/faults.rs, tests/faults/) ---------
.PHONY: soak faults-report
soak: setup wasm native ## Ten-minute load soak at a fixed rate: errors, memory, latency per minute → target/soak/report.md
	$(CARGO_TARGET_DIR)/debug/kvgate-soak --out $(ROOT)/target/soak $(SOAK_ARGS)

faults-report: setup wasm native ## Every fault-injection scenario under load → target/faults/report.md
	+cargo test --workspace --test e2e -- --ignored --exact faults::fault_report --nocapture
# ---- end reliability ------------------------------------------------------------------------

# ---- fuzzing (tests/fuzz: cargo-fuzz / libFuzzer targets, see tests/fuzz/README.md) ---------
CARGO_FUZZ_VERSION := 0.13.2
# Installed in this clone's target/tools; it builds in target/cargo-install.
CARGO_FUZZ_ROOT := $(TOOLS)/cargo-fuzz-$(CARGO_FUZZ_VERSION)
CARGO_FUZZ := $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
export CARGO_FUZZ
# The fuzz binaries (instrumented release builds, feature `libfuzzer`) build in their own
# directory, so it never waits for the main build's lock.
export FUZZ_TARGET_DIR := $(CARGO_TARGET_DIR)/fuzz-build
FUZZ_TARGETS ?=

.PHONY: fuzz-tools fuzz-build fuzz-smoke
fuzz-tools: ## Install cargo-fuzz (pinned) in target/tools
	+@$(CARGO_FUZZ) fuzz --version 2>/dev/null | grep -qF '$(CARGO_FUZZ_VERSION)' || \
	  CARGO_TARGET_DIR=$(ROOT)/target/cargo-install \
	  cargo install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION) --root $(CARGO_FUZZ_ROOT)

fuzz-build: fuzz-tools
	+tests/fuzz/fuzz.sh build

fuzz-smoke: fuzz-tools $(MODEL_DIR)/tokenizer.json ## Every fuzz target for a few seconds on its seeds (FUZZ_SMOKE_SECS, default 5)
	+tests/fuzz/fuzz.sh smoke $(FUZZ_TARGETS)

fuzz: fuzz-tools $(MODEL_DIR)/tokenizer.json ## Every fuzz target for 10^6 executions (FUZZ_RUNS), one after the other; crashes → target/fuzz/artifacts
	+tests/fuzz/fuzz.sh long $(FUZZ_TARGETS)
# ---- end fuzzing ------------------------------------------------------------------------------

# ---- bench: routing quality, gateway overhead, sidecar (tests/bench, kvgate-bench) ----------
# `make bench TRACE=path` replays another trace (Mooncake JSONL, ShareGPT JSON, MT-bench JSONL);
# BENCH_ARGS passes any other kvgate-bench flag (`kvgate-bench --help`), e.g.
# BENCH_ARGS="--trace-seconds 900 --speedup 10 --load 2".
TRACE      ?= tests/fixtures/traces/mooncake/conversation_trace.jsonl
BENCH_ARGS ?=
BENCH_OUT  := $(ROOT)/target/bench

.PHONY: bench-smoke
# The bench runs release builds: the sidecar, and the driver with its load generator and
# upstream (kvgate-loadgen, kvgate-echo: own processes, pinned away from Envoy); bench-smoke
# runs the debug builds of the same binaries that `make native` makes.
bench: setup wasm native ## Benchmarks, side by side in one run: load sweep in virtual time, routing quality on the real stack (filter and EPP), overhead vs plain Envoy (filter and EPP), sidecar; target/bench/report.{json,md,svg}
	+cargo build --release -p kvgate-sync -p kvgate-bench -p kvgate-mock --bins
	KVGATE_SIDECAR=$(CARGO_TARGET_DIR)/release/kvgate-sync \
	  $(CARGO_TARGET_DIR)/release/kvgate-bench --trace $(abspath $(TRACE)) --out $(BENCH_OUT) $(BENCH_ARGS)

bench-smoke: setup wasm native ## A tiny bench run (every phase, a few requests) that checks the bench works and its report is complete
	$(CARGO_TARGET_DIR)/debug/kvgate-bench --smoke --no-progress --trace $(abspath $(TRACE)) --out $(ROOT)/target/bench-smoke
# ---- end bench ------------------------------------------------------------------------------

clean: ## Remove every build output and installed tool of this clone (target/; an exported CARGO_TARGET_DIR elsewhere is kept)
	rm -rf target
