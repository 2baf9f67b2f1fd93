# lacoat — developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# laion_clap imports torchvision; these pairs load together (x86_64: CUDA build, aarch64: CPU build).
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help install test test-slow test-all notebooks lint demo demo-scratch bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install lacoat with its dev extras

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev,demo]' $(TORCH_SPEC)
# aisfx pins numpy==1.23.0 and librosa==0.9.2, which would downgrade ours; lacoat only reads its weights
# file (AisfxAudioEncoder), so it is installed without its dependencies and not listed in pyproject.toml.
	$(PY) -m pip install --quiet --no-deps aisfx==0.1.2
	touch $@

test: install  ## fast, offline test suite
	$(PY) -m pytest -q

test-slow: install  ## only the slow tests: DDP on 2 CPU processes, kill+resume, notebooks executed
	$(PY) -m pytest -q -m 'slow and not gpu'

test-all: install  ## every test, slow ones included
	$(PY) -m pytest -q -m 'not gpu'

notebooks: install  ## execute notebooks/ top to bottom in fast mode (as CI does)
	$(PY) -m pytest -q -m 'not gpu' tests/integration/test_notebooks.py

lint: install  ## ruff
	$(VENV)/bin/ruff check lacoat tests
	$(VENV)/bin/ruff format --check lacoat tests

demo: install  ## CPU demo, frozen encoders: SynthCaps (made once) -> extract (cached once) -> fit the head -> test
	@test -f data/synthcaps/clotho_captions_evaluation.csv || $(VENV)/bin/lacoat synth --out data/synthcaps
	$(VENV)/bin/lacoat extract --config configs/demo.yaml
	$(VENV)/bin/lacoat fit --config configs/demo.yaml
	$(VENV)/bin/lacoat test --config configs/demo.yaml

demo-scratch: install  ## CPU demo, from scratch: a log-mel audio encoder trained with the head (runs/demo_scratch)
	@test -f data/synthcaps/clotho_captions_evaluation.csv || $(VENV)/bin/lacoat synth --out data/synthcaps
	$(VENV)/bin/lacoat fit --config configs/demo_scratch.yaml
	$(VENV)/bin/lacoat test --config configs/demo_scratch.yaml

bench: install  ## benchmarks -> benchmarks/results.json (~30 min on 2 cores; needs `make demo` first)
	$(PY) benchmarks/bench.py --out benchmarks/results.json

clean:  ## remove caches and build outputs (keeps .venv and data)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
