# weightviz: the two commands are `make demo` and `make test` (both set up .venv on a fresh machine).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARCH   := $(shell uname -m)
OUT    ?= out

.PHONY: demo test install lint bench browser clean help docs

help:
	@echo "make demo   - install into $(VENV) and write the demo figures and explorer to $(OUT)/"
	@echo "make test   - install dev dependencies and run the test suite"
	@echo "make docs   - install the pinned docs dependencies and build the documentation site into build/docs/"
	@echo "make lint   - ruff"
	@echo "make bench  - run benchmarks/ (results go to BENCHMARKS.md by hand)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Exact, tested versions for the dev/CI environment (the package itself declares ranges).
$(VENV)/.installed: requirements/ci.txt pyproject.toml | $(BIN)/python
ifeq ($(ARCH),x86_64)
	$(BIN)/pip install -q $$(grep -v -i -E '^torch-lucent' requirements/ci.txt)
else
	$(BIN)/pip install -q torch==2.9.1 torchvision==0.24.1
	$(BIN)/pip install -q $$(grep -v -i -E '^(torch|torchvision|torch-lucent|triton|nvidia|cuda)' requirements/ci.txt | sed 's/==.*//')
endif
	# test-only reference (tests/test_inceptionv1.py imports only its model, which needs torch alone)
	$(BIN)/pip install -q --no-deps $$(grep -i -E '^torch-lucent' requirements/ci.txt)
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed

# Debian chromium for the real-browser tests (Playwright drives it; nothing is downloaded by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; }

demo: install
	$(BIN)/python -m weightviz.cli.demo --out $(OUT)

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Documentation site: mkdocs --strict (any warning, broken link or failing tutorial notebook fails it).
# PYTHONPATH makes the build (and the notebook kernels it starts) use this tree's weightviz; feature
# visualizations of the tutorials and the gallery are cached in build/cache (a rebuild only redraws).
DOCS_ENV := PYTHONPATH=$(CURDIR) WEIGHTVIZ_CACHE=$(CURDIR)/build/cache DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1

$(VENV)/.docs-installed: requirements/docs.txt | $(VENV)/.installed
	$(BIN)/pip install -q -r requirements/docs.txt
	@touch $@

docs: $(VENV)/.docs-installed
	$(DOCS_ENV) $(BIN)/python -m mkdocs build --strict --clean
	@echo "documentation: $(CURDIR)/build/docs/index.html"

lint: install
	$(BIN)/ruff check weightviz tests benchmarks

bench: install
	$(BIN)/python benchmarks/nmf.py

clean:
	rm -rf $(OUT) site build .pytest_cache
