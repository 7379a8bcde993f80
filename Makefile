# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local default: everything under var/ (git-ignored).
DATA ?= var/data
STORE ?= var/models

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

# Train the tiny preset on generated sample data into a local model store and promote it.
run: install
	$(BIN)/cyclegan-jobs sample-data --out $(DATA) --n-a 64 --n-b 64 --size 64
	$(BIN)/cyclegan-jobs train --preset tiny --image-size 64 --epochs 3 \
		--domain-a $(DATA)/domain_a --domain-b $(DATA)/domain_b --model-store $(STORE) \
		--sample-every 40 --checkpoint-every 40 --promote | tee var/last_train.json
	@$(BIN)/python -c "import json; s = json.loads(open('var/last_train.json').read().splitlines()[-1]); \
	print('\nmodel version :', s['version_uri']); print('sample grid   :', s['samples']); \
	print('loss curve    :', s['loss_curve']); print('promoted      :', s['promoted'])"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf var .pytest_cache .ruff_cache
