# Set-up and the two commands of the README. `make run` and `make test` create the virtualenv on
# first use: torch first (the CPU build on CPU machines; pip takes it from this disk where it lies
# there), then the package with its test and world extras (chgnet, dftd3: the stand-in world's
# generator tests run the real calculators) with constraints.txt so that no dependency replaces
# that torch.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run run-lj test test-slow world-setup gc3n4

# difftre_torch/__init__.py holds __version__ (setup.cfg reads it): a new version reinstalls
$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml difftre_torch/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,world]"
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/difftre refine recipes/gc3n4/quick.yaml $(ARGS)

gc3n4: run

run-lj: $(VENV)/.installed
	$(VENV)/bin/difftre refine lj_argon $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow $(ARGS)

world-setup: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,world]"
