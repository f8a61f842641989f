# edgelab: `make run` executes the workbook, `make test` runs what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgelab-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# An offline room: once `make wheelhouse` has completed, set-up installs from it alone.
WHEELHOUSE := wheelhouse
OFFLINE := $(if $(wildcard $(WHEELHOUSE)/.complete),--no-index --find-links $(WHEELHOUSE))

.PHONY: setup data run test lab clean

setup: $(STAMP) data

# The venv is rebuilt only when the pins change; re-running is a no-op.
$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(OFFLINE) -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check $(OFFLINE) --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check $(OFFLINE) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (edgelab)" >/dev/null
	touch $@

# Fashion-MNIST: found and verified, else copied from the wheelhouse, else installed from
# Debian's package where apt exists.
data: $(STAMP)
	@$(PY) -m edgelab.data check 2>/dev/null || { \
	  if [ -d $(WHEELHOUSE)/data ]; then \
	    echo "Fashion-MNIST not found: copying it from $(WHEELHOUSE)/data"; \
	    mkdir -p data/fashion-mnist && cp $(WHEELHOUSE)/data/* data/fashion-mnist/; \
	  elif command -v apt-get >/dev/null; then \
	    echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	  fi; \
	  $(PY) -m edgelab.data check; }

# As root, `make run` also sets up the emulated Pi CPU that 05 and 06 check the bundle on.
run: setup $(if $(SUDO),,pi-rootfs)
	$(PY) -m edgelab.workbook run

test: setup pi-rootfs browser
	EDGELAB_SMOKE=1 EDGELAB_CHECK_FIGURES=1 $(PY) -m pytest -p no:cacheprovider tests notebooks --nbval-lax --nbval-cell-timeout=300

# JupyterLab on 127.0.0.1 (IP=0.0.0.0 opens it to the network), the first free port from 8888
# (or PORT=...); as root it passes --allow-root, without a display it opens no browser, and it
# ends with the URL and its token (edgelab/lab.py).
# The fast tier for development: the unit tests without whole notebooks, Chromium or emulation
# (no root needed); about two minutes. `make test` runs everything.
.PHONY: check
check: $(STAMP)
	EDGELAB_SMOKE=1 $(PY) -m pytest -q -p no:cacheprovider -m "not heavy" tests

lab: setup
	$(PY) -m edgelab.lab $(if $(IP),--ip $(IP)) $(if $(PORT),--port $(PORT))

# Debian's Chromium for the real-browser test (tests/test_browser.py); installed once.
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || { \
	  echo "Chromium not found: installing Debian's chromium"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# Every wheel (for this OS, CPU and Python) and the dataset in one folder for a USB stick;
# see docs/facilitator.md. .complete marks a finished download: set-up then goes offline.
.PHONY: wheelhouse
wheelhouse: data
	rm -f $(WHEELHOUSE)/.complete
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE) \
	  -r requirements.txt -c constraints.txt "setuptools>=68"
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE) --no-deps \
	  -r requirements-nodeps.txt
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE)/aarch64 \
	  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --python-version 3.11 \
	  --implementation cp --only-binary=:all: --no-deps -r edgelab/pi/template/requirements.txt \
	  -r edgelab/pi/template/requirements-litert.txt -r edgelab/pi/template/requirements-executorch.txt
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE)/aarch64 \
	  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --python-version 3.11 \
	  --implementation cp --only-binary=:all: --no-deps \
	  "$$($(PY) -c 'from edgelab.pi.rootfs import SIGILL_PIN; print(SIGILL_PIN)')"
	mkdir -p $(WHEELHOUSE)/data
	cp -L "$$($(PY) -c 'from edgelab.data import find_data_dir; print(find_data_dir())')"/*-ubyte* $(WHEELHOUSE)/data/
	touch $(WHEELHOUSE)/.complete
	@du -sh $(WHEELHOUSE)

clean:
	rm -rf build .pytest_cache
	$(PYTHON) -m edgelab.pi.rootfs --remove 2>/dev/null || \
	  $(SUDO) env EDGELAB_PI_ROOTFS="$(PI_ROOTFS)" $(PYTHON) -m edgelab.pi.rootfs --remove
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

# The arm64 "Pi CPU" the bundle is verified on (edgelab/pi/rootfs.py): qemu-user-static,
# debootstrap, an arm64 Debian root filesystem with the bundle's pinned wheels, built once
# (minutes) under ~/.cache/edgelab; after that, only the binfmt handler (lost at each boot) is
# checked. Needs root; `make clean` asks the same module to remove it (and a half-built one).
# Asked of edgelab/paths.py (torch-free, any python3): one place computes it, $EDGELAB_PI_ROOTFS
# included; its default release (paths.PI_RELEASE) is the suite edgelab.pi.rootfs builds.
PI_ROOTFS := $(shell $(PYTHON) -m edgelab.paths pi_rootfs)
.PHONY: pi-rootfs
pi-rootfs: $(STAMP)
	$(SUDO) env EDGELAB_PI_ROOTFS="$(PI_ROOTFS)" \
	  $(if $(wildcard $(WHEELHOUSE)/.complete),EDGELAB_PI_WHEELS="$(abspath $(WHEELHOUSE))/aarch64") \
	  $(PY) -m edgelab.pi.rootfs

# The notebooks' sources are the paired py:percent files (notebooks/*.py): edit those, then copy
# their cells into the .ipynb files (outputs of unchanged cells are kept).
.PHONY: sync-notebooks
sync-notebooks: $(STAMP)
	for f in notebooks/[0-9]*.py; do $(VENV)/bin/jupytext --quiet --update --to ipynb "$$f"; done

# Apply the committed-notebook policy: run the notebooks in smoke mode, then keep only the
# outputs of cells marked NBVAL_CHECK_OUTPUT (see edgelab/nbhygiene.py).
.PHONY: clean-notebooks
clean-notebooks: setup
	$(PY) -m edgelab.workbook run --smoke
	$(PY) -m edgelab.nbhygiene clean --executed build/executed
