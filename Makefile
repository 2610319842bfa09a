PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# pytest arguments after the defaults: two pytest-xdist workers (tests that must not share the
# machine with each other carry one xdist_group and run on one worker, one at a time);
# make test PYTEST_ARGS= runs the suite serially.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install test lint demo lfw-features bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/noisyfr demo

# Real faces at the papers' geometry (docs/feature_regimes.md): dlib features of ../shared/data/lfw_ge3
# and of the LFW fold-1 pairs (extracted once, cached in runs/features/), then the lfw_features grid
# and its report. LFW_DATA=DIR points at another copy of the shared data folder.
LFW_DATA ?= ../shared/data
FEATS := runs/features

lfw-features: $(STAMP)
	test -f $(FEATS)/lfw_ge3_dlib.parquet || \
		$(BIN)/noisyfr features $(LFW_DATA)/lfw_ge3/images --model dlib --out $(FEATS)/lfw_ge3_dlib.parquet
	test -f $(FEATS)/lfw_pairs_fold1_dlib.parquet || \
		$(BIN)/noisyfr features $(LFW_DATA)/lfw_pairs_fold1 --model dlib --out $(FEATS)/lfw_pairs_fold1_dlib.parquet
	$(BIN)/noisyfr sweep experiments/configs/lfw_features.yaml --resume
	$(BIN)/noisyfr analyze runs/lfw_features

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
