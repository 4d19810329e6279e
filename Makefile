PY ?= python3
# Where pip finds torch==2.13.0. Empty: pip's default (on these machines a local CPU wheel; on an
# ordinary machine PyPI's build, which pulls CUDA packages). For a CPU-only install anywhere:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "[setup 1/4] virtual environment in $(VENV)"
	$(PY) -m venv $(VENV)
	@echo "[setup 2/4] pip"
	$(BIN)/pip install -q --upgrade pip
	@echo "[setup 3/4] torch==2.13.0$(if $(TORCH_INDEX), from $(TORCH_INDEX),) (the long step)"
	$(BIN)/pip install --progress-bar on torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	@echo "[setup 4/4] this project and its dependencies"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)
	@echo "[setup] done"

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

run: setup
	$(BIN)/python -m memxbar.experiments.compress

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
