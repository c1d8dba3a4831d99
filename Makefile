# lorafleet: `make demo` and `make test` set everything up themselves (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := controlplane,runtime,dev,ray
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)

.PHONY: setup test demo lint bench browser sandbox native clean

setup: $(STAMP) browser sandbox native

$(STAMP): pyproject.toml constraints.txt setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# Playwright drives Debian's Chromium: its own browser download does not work offline.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the dashboard tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Replicas run tenants' input: the process launcher confines each in a bubblewrap sandbox
# (docs/security.md). Without bwrap it falls back to unconfined replicas and says so.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
		echo "installing Debian bubblewrap for the replica sandbox"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }

# The CPU kernels (LoRA, decode attention), compiled for this machine (kernels/native_cpu.py); where no compiler is,
# the torch forms serve, so a failed build does not stop setup.
native: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lorafleet.kernels.native_cpu  # ninja from the venv

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check sdk controlplane runtime kernels tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/controlplane.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
