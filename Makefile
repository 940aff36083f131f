# lens — `make serve` sets up and serves, `make test` sets up and tests. Both start from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPO ?= models
HOST ?= 127.0.0.1
PORT ?= 50051
# The default model. With LENS_PRETRAINED unset: a demonstration CLIP trained here on the
# built-in handwritten digits (about 35 s on 2 CPU cores; it knows digits only). With
# LENS_PRETRAINED set to an open_clip checkpoint file (or a pretrained tag where the machine
# can download): that open_clip model ($(LENS_ARCH)) imported with its real weights.
LENS_PRETRAINED ?=
LENS_ARCH ?= ViT-B-32
ifeq ($(LENS_PRETRAINED),)
LENS_MODEL ?= digits-clip
else
LENS_MODEL ?= clip-vit-b-32
endif
BENCH_MODEL ?= clip-vit-b-32
EXTRAS ?= train,index,bulk,milvus,pgvector,dev
PROTOS := $(wildcard protos/lens/v1/*.proto protos/inference/*.proto)

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

# Generated Python for the protocols: packages `lens.v1` and `inference` (KServe v2) under gen/,
# never edited by hand.
proto:
	$(BIN)/python protos/generate.py

model: setup
ifeq ($(LENS_PRETRAINED),)
	$(BIN)/lens train clip --data mnist --arch lens-tiny-clip-digits --steps 900 --batch-size 128 \
	  --lr 2e-3 --device cpu \
	  --out runs/$(LENS_MODEL) --export $(LENS_MODEL) --repo $(REPO) --if-missing
else
	$(BIN)/lens import openclip --arch $(LENS_ARCH) --name $(LENS_MODEL) --repo $(REPO) \
	  --pretrained $(LENS_PRETRAINED) --if-missing
endif

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
	$(BIN)/pytest -q -ra --durations=30 $(PYTEST_ARGS)

# Serving overhead on ViT-B-32 (random weights unless it was imported with real ones).
bench: setup
	$(BIN)/lens import openclip --arch ViT-B-32 --name $(BENCH_MODEL) --repo $(REPO) --if-missing
	$(BIN)/python bench/serve.py --repo $(REPO) --model $(BENCH_MODEL)

clean:
	rm -rf $(VENV) gen runs .pytest_cache .mypy_cache .ruff_cache
