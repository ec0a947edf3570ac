# orthoreg-pl: `make quickstart` (set up + run the CPU demo) and `make test` (set up + run the tests).
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Extras of pyproject.toml to install; `make setup EXTRAS=dev,sweeps,ray` adds the Ray launcher (opt-in).
EXTRAS ?= dev,sweeps
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup quickstart campaign test lint bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; pip takes torch from the local wheel cache when it can.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) -c "import orthoreg_pl.callbacks, torch, lightning, open_clip, hydra"
	touch $(STAMP)

# `make quickstart SIZE=small` (and `make campaign SIZE=small`): two tasks instead of four, for slow machines.
# `ARGS="key=value ..."`: training settings given to every run; the merges select exactly those runs.
SIZE ?= full
ifeq ($(SIZE),small)
QUICKSTART_TASKS := digits,shapes
QUICKSTART_TASK_NAMES := Digits,Shapes
ANALYSIS_SIZE := 'protocol.xi.pairs=[[Digits,Shapes]]'
CAMPAIGN_SIZE := 'datasets=[digits,shapes]' 'lambdas=[1.0,3.0]'
else ifeq ($(SIZE),full)
QUICKSTART_TASKS := digits,shapes,colors,patterns
QUICKSTART_TASK_NAMES := Digits,Shapes,Colors,Patterns
ANALYSIS_SIZE :=
CAMPAIGN_SIZE :=
else
$(error SIZE=$(SIZE); expected full or small)
endif
ARGS ?=
empty :=
space := $(empty) $(empty)
TRAIN_OVERRIDES := $(if $(strip $(ARGS)),'train_overrides=[$(subst $(space),$(comma),$(patsubst %,"%",$(strip $(ARGS))))]')
MERGE_ARGS := 'tasks=[$(QUICKSTART_TASK_NAMES)]' $(TRAIN_OVERRIDES)
CAMPAIGN_ARGS := $(CAMPAIGN_SIZE) $(if $(strip $(ARGS)),'overrides.train=[$(subst $(space),$(comma),$(patsubst %,"%",$(strip $(ARGS))))]')

# θ0 is the tiny CLIP pre-trained on the CPU (shipped: orthoreg_pl/resources/pretrained/, rebuilt bit for bit
# by `python -m orthoreg_pl.models.pretrain_tiny`); λ 1 (configs/experiment/quickstart_clip*.yaml) from its measured curve.

# Two jobs at a time (hydra/launcher=joblib: a process each, which on 2 cores finishes more small jobs per
# minute than one process after another; benchmarks/campaign.py measures it). Re-running it skips finished
# runs and reports and resumes interrupted ones; `make clean` starts afresh.
quickstart: setup
	$(PY) train.py -m experiment=quickstart_clip dataset=$(QUICKSTART_TASKS) mode=standard,standard_ortho hydra/launcher=joblib $(ARGS)
	$(PY) merge.py -m experiment=quickstart_clip_addition,quickstart_clip_negation mode=standard,standard_ortho hydra/launcher=joblib $(MERGE_ARGS)
	$(PY) merge.py experiment=quickstart_clip_analysis $(MERGE_ARGS) $(ANALYSIS_SIZE)
	$(PY) -m orthoreg_pl.report runs/quickstart reports/quickstart --next "make campaign"

# The λ campaign on the same tiny CLIP, reusing the quickstart's runs: 4 tasks × (standard + standard_ortho at
# 4 λ), addition and negation, summary in campaigns/quickstart/ (docs/campaigns.md).
campaign: setup
	$(PY) -m orthoreg_pl.campaign experiment=campaign_quickstart $(CAMPAIGN_ARGS)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports   # the layer contract of pyproject.toml (tests/test_layout.py runs it in make test)

bench: setup
	$(PY) benchmarks/penalty.py
	$(PY) benchmarks/modes.py
	$(PY) benchmarks/merge.py
	$(PY) benchmarks/eval_cache.py
	$(PY) benchmarks/campaign.py

clean:
	rm -rf runs/quickstart reports/quickstart campaigns/quickstart .cache .pytest_cache
