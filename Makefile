# zhtune: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# torch: the CPU build of 2.13.0 (on this machine's disk). Installed before the project so that
# no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: help setup demo test test-fast lint format fonts browser clean

help:
	@echo "make demo   set up .venv and run the quickstart (runs/quickstart)"
	@echo "make test   set up .venv and run the whole test suite"
	@echo "make lint   ruff check + format check + mypy (src/)"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	@$(PY) -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'; print('torch', torch.__version__)"
	touch $@

setup: $(STAMP) fonts

# A CJK font so that Chinese label names render in figures (best effort: needs root + apt).
fonts:
	@fc-list 2>/dev/null | grep -qiE 'wenquanyi|noto sans cjk|source han' && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null) \
	  || echo "warning: could not install fonts-wqy-microhei; Chinese text in figures will show as boxes"; \
	else echo "warning: no CJK font found; install fonts-wqy-microhei (or fonts-noto-cjk)"; fi

# Headless Chromium for the report/web-page tests (Debian packages; best effort).
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; \
	else echo "warning: chromium not found; browser tests will be skipped"; fi

demo: setup
	$(VENV)/bin/zhtune quickstart --out runs/quickstart

test: setup browser
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache
