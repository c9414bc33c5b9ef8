# rtml — every target installs what it needs from this repository's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up down status feast-apply test test-slow test-unit lint format bench run-trainer run-predictor demo eval clean lock

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $(STAMP)

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra production --python-version 3.11 \
		-o infra/requirements-production.lock

up: install
	$(BIN)/rtml up

down: install
	$(BIN)/rtml down

status: install
	$(BIN)/rtml status

feast-apply: install
	$(BIN)/rtml feast-apply

# test: everything but the slow tier (<= 12 minutes on 2 cores); CI runs both tiers
test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not faults and not slow" $(PYTEST_ARGS)

# lint: the type checker and the import contracts (pyproject.toml) read the package as it
# installs, with pipelines/ and serving/ under rtml, from a copy built into LINT_SITE
LINT_SITE := .rtml/lint-site
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	rm -rf $(LINT_SITE)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --target $(LINT_SITE) .
	rm -rf build
	cd $(LINT_SITE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p rtml
	MYPYPATH=$(LINT_SITE) $(BIN)/mypy bench tests
	cd $(LINT_SITE) && $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench

run-trainer: install
	$(BIN)/rtml train

run-predictor: install
	$(BIN)/rtml serve

# make demo [DURATION=120] [SOURCE=trades.csv] [FORMAT=preset] [SPEED=600]: the whole loop
demo: install
	$(BIN)/rtml demo $(if $(DURATION),--duration $(DURATION)) $(if $(SOURCE),--source $(SOURCE)) \
		$(if $(SPEED),--speed $(SPEED)) $(if $(FORMAT),--format $(FORMAT)) \
		$(foreach c,$(COLUMNS),--column $(c))

# a real market file through the whole system, for each target (TARGETS="volatility" for one):
# SOURCE=file.csv, or Microsoft's daily candles
TARGETS ?= return volatility
eval: install
	set -e; for target in $(TARGETS); do \
		$(BIN)/rtml evaluate $(if $(SOURCE),$(SOURCE),--dataset msft) --target $$target \
			$(if $(FORMAT),--format $(FORMAT)) $(foreach c,$(COLUMNS),--column $(c)); \
	done

clean: down
	rm -rf .rtml
