# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make serve   serve the shipped model on http://localhost:8000
#   make test    lint, format check and the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt
APT_PACKAGES := dataset-fashion-mnist
TEST_APT_PACKAGES := prometheus

.PHONY: serve test lint format venv system-deps bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

system-deps:
	scripts/apt-install.sh $(APT_PACKAGES)

serve: venv system-deps
	$(BIN)/abn serve

test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
