# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

# The local default, end to end: a local S3 server (SeaweedFS, data in var/s3, git-ignored),
# sample faces in its input bucket, the tiny preset trained and promoted, the batch translation.
# Run again, it skips what is already done. See cyclegan_jobs/local_default.py.
run: install
	$(BIN)/python -m cyclegan_jobs.local_default

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
