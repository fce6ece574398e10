PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install dev test test-fast lint bench torture slurm-up slurm-down ci clean

install:            ## install sidecar (and the test tools) into the current Python
	$(PIP) install -q '.[dev]'

test: install       ## the whole suite: unit, inotify, processes, SQLite, SLURM end to end
	$(PYTHON) -m pytest -q -ra

test-fast:          ## without the SLURM end-to-end tests
	$(PYTHON) -m pytest -q -ra -m "not slurm and not slow"

lint:
	$(PYTHON) -m ruff check sidecar tests benchmarks
	$(PYTHON) -m mypy

bench: install      ## figures for docs/benchmarks.md (not part of make test)
	$(PYTHON) benchmarks/run.py

slurm-up:           ## install and start a one-node SLURM cluster on this machine (root)
	bash .ci/slurm-up.sh

ci: lint test

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

torture: install    ## the torture, fault and bad-input suites, long version (docs/reliability.md)
	SIDECAR_TORTURE=1 $(PYTHON) -m pytest -q -ra -o timeout=900 tests/torture
