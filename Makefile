# kvs-edge: the commands a developer runs. Builds share one target dir outside the clone.
SHELL := /bin/bash
export KVS_EDGE_CACHE ?= $(HOME)/.cache/kvs-edge
export CARGO_TARGET_DIR ?= $(KVS_EDGE_CACHE)/target
CARGO ?= cargo

.PHONY: demo test lint bench fuzz deps build deb lambda

## demo: install what is missing, build, run the offline pipeline, print where the outputs are
demo: deps
	$(CARGO) build --workspace --bins --examples
	scripts/demo

## test: install what is missing, check formatting and lints, run every test
test: deps lint
	$(CARGO) test --workspace

## lint: the repository stands alone, rustfmt and clippy (warnings are errors)
lint:
	scripts/check-standalone
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: release-mode benchmarks; results go to docs/benchmarks.md by hand
bench: deps
	$(CARGO) run --release -p kvs-local --example bench_ingest
	scripts/bench-agent
	scripts/bench-journal
	scripts/bench-pull
	$(CARGO) build --release -p kvs-edge-archiver
	$(CARGO) run --release -p kvs-edge-tests --example bench_archiver
	$(CARGO) run --release -p kvs-edge-tests --example bench_replay

## deb: a release .deb of both binaries, the units and example configs, into dist/
deb: deps
	scripts/package-deb

## lambda: the archiver's Lambda zip (bootstrap, provided.al2023) into dist/
lambda: deps
	scripts/package-lambda

## fuzz: a minute of cargo-fuzz on kvs-local's PutMedia parser (needs the nightly toolchain)
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p tests/kvs-local/fuzz/corpus/ingest
	cd tests/kvs-local/fuzz && $(CARGO) +nightly fuzz run ingest corpus/ingest seeds -- -max_total_time=60

deps:
	@scripts/install-deps

build: deps
	$(CARGO) build --workspace --all-targets
