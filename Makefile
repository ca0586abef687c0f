# Two commands for a fresh machine: `make study` (the study on the offline default) and `make test`.
# Both create and fill .venv on first use (CPU torch from requirements-cpu.txt) and register the
# notebook kernel "absld" inside it; nothing else needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= smoke

.PHONY: study test test-fast browser env bench lab board rehearse gpu-carry clean-runs quotes

$(STAMP): requirements-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q -r requirements-cpu.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q --no-deps torchattacks 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, absld_core, papermill, pyautoattack, torchattacks" 
	$(PY) -m ipykernel install --sys-prefix --name absld --display-name "Python (absld)" >/dev/null
	touch $(STAMP)

env: $(STAMP)

# the preset's trainings in parallel workers (cores / 1 thread each), then its notebooks render them
study: $(STAMP)
	$(VENV)/bin/absld sweep --preset $(PRESET)
	$(VENV)/bin/absld study --preset $(PRESET)

# the preset's notebooks shrunk for a CPU, with the real run's cost report (make rehearse PRESET=paper)
rehearse: $(STAMP)
	$(VENV)/bin/absld study --preset $(PRESET) --rehearse

# JupyterLab on the notebooks; as root (containers) it needs --allow-root, added here when needed
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# TensorBoard on the study's runs (every run writes its curves while it trains), http://localhost:6006
board: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs/$(PRESET) --bind_all

# Chromium and ChromeDriver for the browser tests (tests/test_browser.py: JupyterLab, Run All, a slider),
# from Debian's packages when missing and this is root on a Debian-like system; elsewhere those tests skip
# and say so (install chromium and chromium-driver, or any Chromium with a matching chromedriver)
browser:
	@if command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Chromium and ChromeDriver for the browser tests (apt-get install chromium chromium-driver)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
	    || echo "warning: apt-get could not install chromium chromium-driver; the browser tests will skip"; \
	else echo "note: no Chromium/chromedriver and no root apt-get here; the browser tests will skip (install chromium and chromium-driver)"; fi

test: $(STAMP) browser
	$(PY) -m pytest -q -ra --durations=15 tests

# the quick subset: every test but the end-to-end ones marked `slow` (notebooks in a browser, whole
# studies, the rehearsals); `make test` and CI run everything
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" tests

# rewrite the README's and docs/' quoted results from the generated files they quote (a test checks them)
quotes: $(STAMP)
	$(PY) -m absld_core.quotes

bench: $(STAMP)
	$(PY) bench/attack_throughput.py

# what `bash bench/gpu/run.sh` carries to a lent GPU (the wheels its image lacks, for Python 3.12, and the
# CIFAR-10 JPEG copy), then the sizes against the 64 MiB limit
gpu-carry: $(STAMP)
	rm -rf bench/gpu/wheels && mkdir -p bench/gpu/wheels/site bench/gpu/carry
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d bench/gpu/wheels pyautoattack==0.2.0 2>&1 | grep -v "is ignored" || true
	# pyautoattack's wheel is 40 MiB, 44 MB of it an example model: carry its code alone (a folder on PYTHONPATH)
	cd bench/gpu/wheels && unzip -q -o pyautoattack-*.whl 'pyautoattack/*.py' -d site && rm pyautoattack-*.whl
	[ -f ../shared/data/cifar10-jpeg.tar.gz ] && cp ../shared/data/cifar10-jpeg.tar.gz bench/gpu/carry/ || \
	  echo "no ../shared/data/cifar10-jpeg.tar.gz: put the CIFAR-10 JPEG copy in bench/gpu/carry/ by hand"
	$(PY) bench/gpu/carry.py

clean-runs:
	rm -rf runs
