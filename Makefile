# dermattn: every target creates .venv and installs the project on first use.
#   make train EXP=metablock [DATA=pad_ufes20 DATA_DIR=/path] [ARGS="--trainer.max_epochs=2"] [RESUME=runs/.../last.ckpt]
#   make preprocess DATA=isic2020 DATA_DIR=/path [SIZE=512] [FORMAT=png] [WORKERS=N]   resized image copies that training then reads
#   make predict CKPT=runs/metablock/<run>/checkpoints/last.ckpt [DATA=... DATA_DIR=...] [SPLIT=test] [OUT=preds.csv]
#   make predict CKPT=... DATA=isic2020 DATA_DIR=/path SPLIT=unlabeled   (the challenge test set)
#   make predict CKPT=... IMAGES=/folder/of/pictures                     (new images, no metadata)
#   make predict CKPT="a.ckpt b.ckpt" TTA=8                              (ensemble, 8 dihedral views)
#   make cv EXP=metablock [DATA=... DATA_DIR=...] [CV_DIR=runs/metablock-cv/<stamp>] [ARGS=...]   k-fold CV table
#   make compare [DATA=... DATA_DIR=...] [SEEDS="1 2 3"] [COMPARE_DIR=runs/compare/<stamp>]   every architecture
#   make evaluate PRED=runs/.../predictions.csv [PRED2=other.csv] [OUT=dir] [VAL=val_predictions.csv] [ARGS=...]
#   make explain RUN=runs/attn_vgg/<run> [LIMIT=32] [METHODS="attention gradcam"] [ARGS=...]   score every explanation map
#   make test        fast test suite (a few minutes on 2 CPU cores)
#   make test-slow   the slow integration tests (DDP on CPU, longer runs)
#   make bench       training and data-loading throughput of the default experiment
#   make figures [RUNS=runs/compare/<stamp>]   the pictures in docs/figures/ (and docs/gallery.md)
#   make notebook    the notebooks in JupyterLab
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

EXP ?= metablock
DATA ?=
DATA_DIR ?=
ARGS ?=
RESUME ?=
CKPT ?=
SPLIT ?= all
OUT ?=
TTA ?= 1
CV_DIR ?=
SEEDS ?= 1 2 3
COMPARE_DIR ?=
RUNS ?=
PRED ?=
PRED2 ?=
VAL ?=
RUN ?=
LIMIT ?=
METHODS ?=
SIZE ?= 512
FORMAT ?= jpeg
QUALITY ?= 95
WORKERS ?=

# albumentations otherwise checks for updates over the network at import.
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

DATA_ARGS := $(if $(DATA),--data.dataset=$(DATA) --config experiments/data/$(DATA).yaml) $(if $(DATA_DIR),--data.data_dir=$(DATA_DIR))

.PHONY: help install train preprocess cv compare predict evaluate explain test test-slow bench figures notebook clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'quantus==0.6.0'  # see pyproject.toml's dev extra
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev extras

train: $(STAMP) ## train EXP (default metablock) on DATA (default: built-in synthetic)
	$(PY) -m experiments.train --config experiments/$(EXP).yaml $(DATA_ARGS) $(if $(RESUME),--resume=$(RESUME)) $(ARGS)

preprocess: $(STAMP) ## resized copies of DATA's images (SIZE=512) that training then reads
	@test -n "$(DATA)" || { echo "usage: make preprocess DATA=isic2020 DATA_DIR=/path [SIZE=512] [FORMAT=jpeg|png] [QUALITY=95] [WORKERS=all cores] [ARGS=\"--source-options '{...}'\"]"; exit 2; }
	$(PY) -m datamodules.preprocess --dataset $(DATA) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --size $(SIZE) --format $(FORMAT) --quality $(QUALITY) $(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

cv: $(STAMP) ## k-fold cross-validation of EXP (CV_DIR=... resumes one): summary.md, mean ± std over folds
	$(PY) -m experiments.cv --config experiments/$(EXP).yaml $(if $(CV_DIR),--dir $(CV_DIR)) -- $(DATA_ARGS) $(ARGS)

compare: $(STAMP) ## every architecture on the same data, split and SEEDS: one table (summary.md) and figure
	$(PY) -m experiments.compare --seeds $(SEEDS) $(if $(COMPARE_DIR),--dir $(COMPARE_DIR)) -- $(DATA_ARGS) $(ARGS)

predict: $(STAMP) ## per-image class probabilities from CKPT (several: an ensemble; TTA=8) on DATA/DATA_DIR (SPLIT=all|train|val|test|unlabeled) or IMAGES=folder
	@test -n "$(CKPT)" || { echo "usage: make predict CKPT=path/to.ckpt [DATA=... DATA_DIR=...] [SPLIT=all|unlabeled] [IMAGES=folder] [OUT=file.csv]"; exit 2; }
	$(PY) -m experiments.predict --ckpt $(CKPT) $(if $(DATA),--dataset $(DATA)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --split $(SPLIT) $(if $(IMAGES),--images $(IMAGES)) $(if $(OUT),--out $(OUT)) --tta $(TTA)

evaluate: $(STAMP) ## the report of a predictions file PRED (CIs, calibration, operating points, subgroups); PRED2: paired comparison
	@test -n "$(PRED)" || { echo "usage: make evaluate PRED=runs/.../predictions.csv [PRED2=other.csv] [OUT=dir] [VAL=val_predictions.csv] [ARGS=\"--positive MEL BCC SCC\"]"; exit 2; }
	$(PY) -m experiments.evaluate $(PRED) $(PRED2) $(if $(VAL),--val $(VAL)) $(if $(OUT),--out $(OUT)) $(ARGS)

explain: $(STAMP) ## score every map of RUN (or CKPT) on its test split: localisation, faithfulness, sanity; explanations.json/.md + figures
	@test -n "$(RUN)$(CKPT)" || { echo "usage: make explain RUN=runs/<exp>/<run> | CKPT=path/to.ckpt [LIMIT=N] [METHODS=\"attention gradcam ...\"] [ARGS=\"--checks localisation deletion\"]"; exit 2; }
	$(PY) -m experiments.explain $(if $(RUN),--run $(RUN),--ckpt $(CKPT)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(METHODS),--methods $(METHODS)) $(ARGS)

test: $(STAMP) ## fast test suite
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP) ## slow integration tests (DDP on CPU, multi-epoch runs)
	$(PY) -m pytest -q -m slow $(ARGS)

bench: $(STAMP) ## training and data-loading images/s of EXP, full-resolution vs cached images, the ProtoPNet push, ISIC 2024 at scale
	$(PY) -m experiments.bench --config experiments/$(EXP).yaml $(ARGS)
	$(PY) -m experiments.bench_isic2024
	$(PY) -m experiments.bench_push
	$(PY) -m experiments.bench_gpu

figures: $(STAMP) ## the pictures in docs/figures/ + docs/gallery.md, from runs it trains into runs/figures/ (or RUNS=runs/compare/<stamp>)
	$(PY) -m experiments.figures $(if $(RUNS),--runs $(RUNS)) $(if $(ARGS),-- $(ARGS))

notebook: $(STAMP) ## open notebooks/ in JupyterLab (installs the notebooks extra into .venv on first use)
	@$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks

clean: ## remove caches (keeps runs/, the synthetic data cache and .venv)
	rm -rf wandb lightning_logs .pytest_cache
	find . -name __pycache__ -prune -not -path './$(VENV)/*' -exec rm -rf {} +
