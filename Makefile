# Two entry points: `make demo` (the main job on the local default) and `make test`.
# Both create .venv from the pinned requirements on first use (pip, not uv: torch comes from local disk).
PYTHON ?= python3
VENV   := .venv
REQS   := requirements.txt $(filter-out requirements/containers.txt,$(wildcard requirements/*.txt)) pyproject.toml
STAMP  := $(VENV)/.installed-$(shell cat $(REQS) | sha1sum | cut -c1-12)

.PHONY: setup setup-containers demo test test-containers lint bench

# requirements.txt: the pinned dependencies and this checkout's packages, editable (the `dogbreeds` command);
# then the SageMaker SDK and the containers' toolkits that the tests use as oracles, without their dependencies
# (requirements/sdk-oracle.txt, requirements/toolkits.txt).
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

# The training and inference tests again under the SageMaker PyTorch containers' versions (torch 2.6.0 on
# Python 3.12, requirements/containers.txt) in .venv-containers, beside .venv, and the cross-version test that
# trains under one venv and serves under the other: DOGBREEDS_CROSS_TORCH=required makes it fail, not skip,
# when a venv is missing. The tests picked need only the image stack (no moto, boto3 or Chalice).
# python3.12 on PATH, else pyenv's 3.12 (its shim answers only when 3.12 is the selected version).
CONTAINERS_PYTHON ?= $(firstword $(shell python3.12 -c '' 2>/dev/null && echo python3.12) \
                       $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
CONTAINERS_VENV   := .venv-containers
CONTAINERS_STAMP  := $(CONTAINERS_VENV)/.installed-$(shell cat requirements/containers.txt pyproject.toml | sha1sum | cut -c1-12)
CONTAINERS_TESTS  := tests/test_training.py tests/test_inference_handlers.py tests/test_predict_contract.py \
                     tests/test_report.py tests/test_diagnostics.py tests/test_cross_torch.py

$(CONTAINERS_STAMP): requirements/containers.txt pyproject.toml
	@test -x $(CONTAINERS_VENV)/bin/python || $(CONTAINERS_PYTHON) -m venv $(CONTAINERS_VENV)
	$(CONTAINERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/containers.txt
	$(CONTAINERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(CONTAINERS_VENV)/.installed-* && touch $@

setup-containers: $(CONTAINERS_STAMP)

test-containers: setup setup-containers
	@DOGBREEDS_CROSS_TORCH=required $(CONTAINERS_VENV)/bin/python -m pytest $(CONTAINERS_TESTS) $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
