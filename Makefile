# Two entry points: `make demo` (the main job on the local default) and `make test`.
# Both create .venv from the pinned requirements on first use (pip, not uv: torch comes from local disk).
PYTHON ?= python3
VENV   := .venv
REQS   := requirements.txt $(wildcard requirements/*.txt) pyproject.toml
STAMP  := $(VENV)/.installed-$(shell cat $(REQS) | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench

# requirements.txt: the pinned dependencies and this checkout's packages, editable (the `dogbreeds` command);
# then the SageMaker SDK that the tests use as an oracle, without its dependencies (requirements/sdk-oracle.txt).
$(STAMP): $(REQS)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/sdk-oracle.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/toolkits.txt
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/python -m dogbreeds.demo $(ARGS)

# The import layering and the lint rules first (seconds), then the suite.
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
test: setup lint
	@$(VENV)/bin/python -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check

bench: setup
	$(VENV)/bin/python bench/cached_vs_uncached.py
	$(VENV)/bin/python bench/diagnostics_overhead.py
