# `make demo`: set up .venv from nothing and run the end-to-end demo.
# `make test`: set up .venv from nothing and run the whole test suite (ruff, the docs build, pytest).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs browser bench toymodel protos

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$$(grep '^torch==' constraints.txt)"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scalpel demo

lint: $(STAMP)
	$(BIN)/ruff check .

# The manual (docs/, MkDocs): a broken link or a page missing from the nav fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Two workers (one per core; each its own PostgreSQL database), then what needs the machine alone.
test: lint docs browser
	$(BIN)/python -m pytest -n 2 --dist loadscope -m "not exclusive"
	$(BIN)/python -m pytest -m exclusive

# Headless Chromium for the check-report rendering test (best effort: without it that test checks
# the page by parsing only, and says so).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		timeout 300 apt-get update -qq >/dev/null && \
		timeout 600 apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "chromium unavailable: the report test will check the page by parsing only"

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/overhead.py

# Retrain the committed toy model from scratch (deterministic, about 14 minutes on 2 cores), then
# its committed successor (about 30 s) and SAE (about 3 minutes) from it.
toymodel: $(STAMP)
	$(BIN)/scalpel toyworld train
	$(BIN)/scalpel toyworld successor
	$(BIN)/scalpel sae train

# Regenerate the committed gRPC stubs (service/api/scalpel/v1) from protos/.
protos: $(STAMP)
	$(BIN)/python service/api/generate.py
