# pbrl: `make demo` trains CPL, SFT and BC on the shipped demo dataset and evaluates them; `make test` runs the tests.
# Both install into $(VENV) (default .venv) once and reuse it.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pbrl-installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

# Debian packages the tests use: a real browser for the annotation page, OSMesa for headless MuJoCo rendering
SYSTEM_PACKAGES := chromium chromium-driver libosmesa6

.PHONY: install system-packages demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# a CPU build of torch first, unless some torch is already there (a bare `torch` pulls the CUDA build)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[metaworld,minari,export,video,overcooked,sequence,robot,ray,dev]"
	# the Overcooked-AI human trials (Carroll et al. 2019) ship only in overcooked-ai 1.1.0, which does not import
	# under NumPy 2: install its files without its dependencies; pbrl reads the trials, never imports the package
	$(PY) -m pip install -q --no-deps overcooked-ai==1.1.0
	touch $(STAMP)

install: $(STAMP)

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "pbrl: the browser and rendering tests need Debian's$$missing (apt-get install$$missing); they are skipped"; exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP) system-packages
	$(PY) -m ruff check .
	# two workers on the two cores; --dist loadscope keeps each module (and its module-scoped fixtures) on one worker
	$(PY) -m pytest -n 2 --dist loadscope --durations=15

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) scripts/bench/data.py
	$(PY) scripts/bench/speed.py
	$(PY) scripts/bench/agents.py

clean:
	rm -rf runs/demo .pytest_cache
