# lens — `make serve` sets up and serves, `make test` sets up and tests. Both start from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPO ?= models
HOST ?= 127.0.0.1
PORT ?= 50051
# The default model: an open_clip architecture imported into $(REPO)/$(LENS_MODEL). With
# LENS_PRETRAINED unset its weights are random; point it at a checkpoint file (or a pretrained
# tag where the machine can download) for real weights.
LENS_MODEL ?= clip-vit-b-32
LENS_ARCH ?= ViT-B-32
LENS_PRETRAINED ?=
EXTRAS ?= train,index,dev
PROTOS := $(wildcard protos/lens/v1/*.proto)

.PHONY: setup proto model serve test lint format typecheck pytest bench clean

setup: $(VENV)/.installed

# Tools first (the protocol is generated with them), then the project, editable.
$(VENV)/.installed: pyproject.toml $(PROTOS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q 'grpcio-tools>=1.62' 'mypy-protobuf>=3.6'
	$(MAKE) --no-print-directory proto
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Generated Python for the protocol: package `lens.v1` under gen/, never edited by hand.
proto:
	$(BIN)/python protos/generate.py

model: setup
	$(BIN)/lens import openclip --arch $(LENS_ARCH) --name $(LENS_MODEL) --repo $(REPO) \
	  --if-missing $(if $(LENS_PRETRAINED),--pretrained $(LENS_PRETRAINED),)

serve: model
	$(BIN)/lens serve --host $(HOST) --port $(PORT) --repo $(REPO) --default-model $(LENS_MODEL)

test: setup lint typecheck pytest

lint: setup
	$(BIN)/ruff check server training clients tests bench protos
	$(BIN)/ruff format --check server training clients tests bench protos

format: setup
	$(BIN)/ruff check --fix server training clients tests bench protos
	$(BIN)/ruff format server training clients tests bench protos

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

bench: model
	$(BIN)/python bench/serve.py --repo $(REPO) --model $(LENS_MODEL)

clean:
	rm -rf $(VENV) gen .pytest_cache .mypy_cache .ruff_cache
