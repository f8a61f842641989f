# edgelab: `make run` executes the workbook, `make test` runs what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgelab-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run test lab clean

setup: $(STAMP) data

# The venv is rebuilt only when the pins change; re-running is a no-op.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (edgelab)" >/dev/null
	touch $@

# Fashion-MNIST: found and verified, or installed from Debian's package where apt exists.
data: $(STAMP)
	@$(PY) -m edgelab.data check 2>/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	  fi; \
	  $(PY) -m edgelab.data check; }

run: setup
	$(PY) -m edgelab.workbook run

test: setup
	EDGELAB_SMOKE=1 $(PY) -m pytest -p no:cacheprovider tests notebooks --nbval-lax --nbval-cell-timeout=300

lab: setup
	$(VENV)/bin/jupyter lab notebooks/00_baseline.ipynb

clean:
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

# Apply the committed-notebook policy: run the notebooks in smoke mode, then keep only the
# outputs of cells marked NBVAL_CHECK_OUTPUT (see edgelab/nbhygiene.py).
.PHONY: clean-notebooks
clean-notebooks: setup
	$(PY) -m edgelab.workbook run --smoke
	$(PY) -m edgelab.nbhygiene clean --executed build/executed
