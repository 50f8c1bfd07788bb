# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make serve   serve the shipped model on http://localhost:8000 (installs what serving needs)
#   make test    lint, format check and the whole test suite (adds the test and lint tools)
#   make wheel   build dist/abn_serve-*.whl (pip install dist/*.whl; abn serve --model DIR)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt
APT_PACKAGES := dataset-fashion-mnist
# prometheus (prometheus, promtool) and docker-compose (1.29): tests/deploy validates the
# deployment files with them and runs a real Prometheus against a real server; wrk: the
# bench's load generator, which tests/loadtest drives in a tiny end-to-end run.
TEST_APT_PACKAGES := prometheus docker-compose wrk

.PHONY: serve test lint format venv dev-venv system-deps test-deps dashboards bench bench-bitserial wheel clean

# the package and what serving needs, nothing else (make serve)
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

# plus the test, lint and deployment tools (the dev extra) for make test, lint, format
$(BIN)/.installed-dev: $(BIN)/.installed
	$(PIP) -e '.[dev]'
	touch $@

# the bit-serial kernels (ABN_BACKEND=bitserial, abn/bitserial/): compiled at install with the
# system's g++ into abn/bitserial/_build/, rebuilt when their source changes
BITSERIAL_APT_PACKAGES := g++
$(BIN)/.bitserial: $(BIN)/.installed abn/bitserial/csrc/bitserial.cpp abn/bitserial/build.py
	scripts/apt-install.sh $(BITSERIAL_APT_PACKAGES)
	$(BIN)/python -m abn.bitserial
	touch $@

venv: $(BIN)/.installed $(BIN)/.bitserial

dev-venv: $(BIN)/.installed-dev $(BIN)/.bitserial

system-deps:
	scripts/apt-install.sh $(APT_PACKAGES)

test-deps:
	scripts/apt-install.sh $(TEST_APT_PACKAGES)

# The benchmark suite (loadtest/bench.py): the service against LitServe, a naive FastAPI server
# and the lean floor, driven by wrk; writes docs/benchmarks.md (+ docs/benchmarks/), every figure
# from one run, about 10 minutes on 2 cores. It makes the peers' own venv (.venv-peers, once) and
# starts and stops its own servers on free ports. BENCH_MODEL picks the model directory;
# BENCH_ARGS adds options, e.g. BENCH_ARGS="--rounds 1 --run-seconds 3" for a short run.
BENCH_MODEL ?= model_store/fmnist-abn
BENCH_ARGS ?=
BENCH_APT_PACKAGES := wrk
bench: venv system-deps
	scripts/apt-install.sh $(BENCH_APT_PACKAGES)
	$(BIN)/python -m loadtest.bench --model $(BENCH_MODEL) $(BENCH_ARGS)

# The bit-serial backend against the float path (loadtest/bitserial.py): latency per width at
# batch 1 and 32, adaptive latency against BitOps, served throughput and p50 at the cheapest
# and dearest budget; writes docs/bitserial.md (+ docs/bitserial/), about 6 minutes on 2 cores.
# The exactness figures: .venv/bin/python scripts/bitserial_exactness.py (docs/bitserial/).
bench-bitserial: venv system-deps
	scripts/apt-install.sh $(BENCH_APT_PACKAGES)
	$(BIN)/python -m loadtest.bitserial --model $(BENCH_MODEL) $(BENCH_ARGS)

# Regenerate the Grafana dashboards (deploy/grafana/dashboards/*.json) from their script.
dashboards: dev-venv
	$(BIN)/python deploy/grafana/generate_dashboards.py

serve: venv
	$(BIN)/abn serve

test: dev-venv system-deps test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: dev-venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A wheel of the package alone (no model inside: abn serve --model DIR names one, or run it
# from a checkout, where model_store/fmnist-abn is found).
wheel: venv
	$(BIN)/pip wheel --no-deps --no-build-isolation --wheel-dir dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dist build abn/bitserial/_build
