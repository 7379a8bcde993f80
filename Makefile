# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run airflow test browser lint format bench stack-test clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-job.txt requirements-airflow.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
# Matplotlib's font cache, built now: built on first use it logs a WARNING (after 5 s), which
# would show in the training task's log (cyclegan_jobs/plots.py also keeps it at DEBUG).
	$(BIN)/python -c "import matplotlib.font_manager"
	touch $@

# The local default, end to end through Airflow: a local S3 server (SeaweedFS, data in var/s3),
# sample data, an Airflow home in var/airflow (SQLite), cyclegan_retrain when no model is
# promoted, then cyclegan_nightly_translate. Run again, it skips what is already done.
# See scripts/airflow_local.py; `python -m cyclegan_local.local_default` does the same without
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

# Two workers (pytest-xdist), each test file on one of them: its module fixtures (a trained
# model, an Airflow stack) are built once; the longest files first (tests/conftest.py). Before
# anything, the browser test's chromium: scripts/ensure_browser.sh installs it when root with
# apt-get, otherwise stops and says what to install.
test: browser lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25

browser:
	@scripts/ensure_browser.sh

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The Docker deployment (docker/compose.yaml) built on a Debian base made here, brought up on the
# CeleryExecutor with 2 gpu-queue workers, exercised over the REST API, restarted, benchmarked
# and torn down (see scripts/stack_test.py). Needs root and a Docker engine (apt-get install
# docker.io docker-compose debootstrap); about 30 minutes on 2 cores. STACK_TEST_ARGS=--cold
# rebuilds the images without the cache; --bench-images 0 skips the 500-image benchmark.
stack-test: install
	$(BIN)/python scripts/stack_test.py $(STACK_TEST_ARGS)

bench: install
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf var .pytest_cache .ruff_cache
