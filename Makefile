# attrflow's commands. Every target sets up .venv first, so a fresh machine with
# only Python 3.11 needs nothing else: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Nothing at run time may reach a model hub: the default weights ship in packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# No BentoML usage tracking. The bentoml CLI reads this before it imports serving/ (whose
# __init__ sets it too, for in-process use), so only the environment covers `bentoml serve/build`.
export BENTOML_DO_NOT_TRACK := True

ATTRFLOW_HOME ?= .attrflow
UI_PORT       ?= 4200
EVIDENTLY_PORT ?= 8000
SERVE_PORT    ?= 3000
MODEL         ?= demo
# Prefect keeps its database under attrflow's data directory, so `make ui` shows the demo's runs.
export PREFECT_HOME ?= $(abspath $(ATTRFLOW_HOME))/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint format serve ui clean bench bench-quality bench-finetune bench-seeds bench-tune bench-serving bench-loop bench-defaults bench-label-noise bench-stacking bench-reproduce bench-extraction bench-scale

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup  ## generate the demo catalog and run the main job on it
	mkdir -p $(PREFECT_HOME)
	$(BIN)/attrflow demo

test: setup lint  ## the checks below, then the test suite
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup  ## ruff (lint + format check) and the import contracts (pyproject.toml: [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

serve: setup  ## the BentoML endpoint for MODEL's production version on http://127.0.0.1:$(SERVE_PORT)
	$(BIN)/attrflow serve $(MODEL) --port $(SERVE_PORT)

# `make ui` also serves the drift dashboards: Evidently's UI on ATTRFLOW_HOME/monitoring/workspace
# (flows/dashboards.py; `python -m flows.dashboards` is `evidently ui`, which fails to import under pandas 3).
# Evidently sends no usage telemetry when DO_NOT_TRACK is set (evidently/telemetry.py).
ui: export DO_NOT_TRACK := 1
ui: setup  ## Prefect server + UI (http://127.0.0.1:$(UI_PORT)) serving attrflow's deployments, and the drift dashboards (http://127.0.0.1:$(EVIDENTLY_PORT))
	mkdir -p $(PREFECT_HOME)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(UI_PORT) & server=$$!; \
	ATTRFLOW_HOME=$(ATTRFLOW_HOME) $(BIN)/python -m flows.dashboards --host 127.0.0.1 --port $(EVIDENTLY_PORT) & evidently=$$!; \
	trap 'kill $$server $$evidently 2>/dev/null' EXIT INT TERM; \
	until curl -sf http://127.0.0.1:$(UI_PORT)/api/health >/dev/null; do sleep 1; done; \
	until curl -sf http://127.0.0.1:$(EVIDENTLY_PORT)/api/version >/dev/null; do kill -0 $$evidently || exit 1; sleep 1; done; \
	echo "Prefect UI: http://127.0.0.1:$(UI_PORT)"; \
	echo "Drift dashboards (Evidently UI): http://127.0.0.1:$(EVIDENTLY_PORT)"; \
	ATTRFLOW_EVIDENTLY_PORT=$(EVIDENTLY_PORT) PREFECT_API_URL=http://127.0.0.1:$(UI_PORT)/api $(BIN)/python -m flows.deployments

clean:
	rm -rf $(VENV) .attrflow .pytest_cache

bench: setup  ## every benchmark, in order (the search reuses the quality run's cache); results in bench/results/
	$(MAKE) bench-quality
	$(MAKE) bench-finetune
	$(MAKE) bench-seeds
	$(MAKE) bench-tune

bench-quality: setup  ## the quality benchmark on the real fashion catalog (bench/quality.py; docs/results.md)
	$(BIN)/python bench/quality.py

# The fine-tuning regime: text, image, concat and the best modality_attention, each warm-started
# from its frozen row and trained with its encoders for a step budget (~18 minutes on 2 cores);
# adds its rows to the quality report.
bench-finetune: setup  ## the fine-tuning rows (bench/quality.py --finetune; after bench-quality)
	$(BIN)/python bench/quality.py --rows none --finetune --skip-tfidf --skip-colour-hidden --reuse

# Run to run: the single-modality and the two best fused rows again with training seeds 1 and 2
# (reuses the quality run's rows; writes bench/results/seeds.{json,md}, leaves the quality report alone).
bench-seeds: setup  ## text, concat, modality_attention_l0.01, _l0.1 with seeds 1, 2 (bench/quality.py --seeds; after bench-quality)
	$(BIN)/python bench/quality.py --rows text,concat,modality_attention_l0.01,modality_attention_l0.1 --seeds 1,2 --reuse --skip-colour-hidden --no-report

bench-tune: setup  ## trials in 10 minutes of search, tuned vs hand-picked (bench/tune.py; after bench-quality)
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python bench/tune.py

# The endpoint against the same model in process: the quality run's exported best model if there
# is one, else a frozen concat trained on a catalog sample (first run only); ~6 minutes on 2 cores.
bench-serving: setup  ## BentoML endpoint vs in-process ceiling: throughput, latency, batches, RSS (bench/serving.py)
	$(BIN)/python bench/serving.py

# Value extraction on the public benchmarks in ../shared/data/attribute-values (AE-110k, OA-Mine):
# the dictionary baseline and the tagger rows, each trained on train.jsonl and scored on test.jsonl
# by the benchmarks' counting rule (fine-tunes the default text encoder on the CPU), then the
# low-resource rows (train_0.2.jsonl, a fifth of the training products), then fashion with distant
# labels, M-JAVE's visual gates and the image-swap test and a low-resource curve (bench/extraction_fashion.py, ~35 minutes).
bench-extraction: setup  ## value extraction vs GPT-4 on AE-110k and OA-Mine (bench/extraction.py; docs/results.md)
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/extraction.py --train train_0.2 --epochs 10 --seeds 0 --out extraction-low
	$(BIN)/python bench/extraction_fashion.py

# Batch scoring in process vs local Ray vs a 2-node local cluster (equal cores), search trials per
# 10 minutes on 2 nodes vs local, the pipeline through a work-pool worker vs in process. The whole
# catalog and 10-minute searches: ~1 hour on 2 cores. Smaller: SCALE_ARGS="--products 2000 --tune-seconds 120".
bench-scale: setup  ## distributed vs in-process at equal cores: scoring, search, pipeline (bench/scale.py)
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

bench-loop: setup  ## drift -> event -> retrain -> champion/challenger -> hot swap, unattended (bench/closed_loop.py)
	$(BIN)/python bench/closed_loop.py

# `attrflow fit` with its defaults against TF-IDF + LR on catalogs it has never seen (demo, AE-110k and
# OA-Mine as text-only catalogs, fashion); each gets the budget, about an hour in all on 2 cores.
bench-defaults: setup  ## attrflow fit vs TF-IDF + LR on new catalogs, paired-bootstrap intervals (bench/defaults.py)
	$(BIN)/python bench/defaults.py

bench-label-noise: setup  ## confident learning on fashion: flags, a reviewed sample, the effect of filtering (bench/label_noise.py)
	$(BIN)/python bench/label_noise.py

bench-reproduce: setup  ## the shipped concat/modality_attention configs through `attrflow train` vs their benchmark rows (bench/reproduce.py; after bench-quality, bench-seeds)
	$(BIN)/python bench/reproduce.py

bench-stacking: setup  ## late fusion on fashion: the alpha mix vs stacking, paired-bootstrap intervals (bench/stacking.py)
	$(BIN)/python bench/stacking.py
