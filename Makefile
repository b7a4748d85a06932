# egresswatch: the commands a newcomer runs. Every target creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DEMO   := demo/egresswatch-demo.pcapng

.PHONY: help install run demo test lint bench soak clean

help:
	@echo "make run     start the live agent on this machine (needs root or CAP_NET_RAW)"
	@echo "make demo    replay the bundled capture, no root needed"
	@echo "make test    run the whole test suite"
	@echo "make lint    ruff and mypy (strict)"
	@echo "make bench   replay and live-capture benchmarks, side by side with tshark/tcpdump"
	@echo "make soak    the live agent's memory over a one-hour soak (root, network namespaces)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/egresswatch run

demo: install
	$(BIN)/egresswatch replay --format table --geo-dir geo/sample $(DEMO)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run.py

soak: install
	$(BIN)/python bench/soak.py --duration 3600

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
