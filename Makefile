# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run airflow test lint format bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

# The local default, end to end through Airflow: a local S3 server (SeaweedFS, data in var/s3),
# sample data, an Airflow home in var/airflow (SQLite), cyclegan_retrain when no model is
# promoted, then cyclegan_nightly_translate. Run again, it skips what is already done.
# See scripts/airflow_local.py; `python -m cyclegan_jobs.local_default` does the same without
# Airflow.
run: install
	$(BIN)/python scripts/airflow_local.py run

# The Airflow UI (airflow standalone) with both DAGs, the pool, the aws_default connection and
# the local S3 server, until Ctrl-C; prints the address and login.
airflow: install
	$(BIN)/python scripts/airflow_local.py standalone

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
