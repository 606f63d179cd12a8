# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install the server (and Mosquitto when root), start it
#   make test   the same plus test tools and Chromium, then ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
VENDOR := static/vendor/.installed

.PHONY: run test lint typecheck pytest system-deps system-deps-test bench clean translations

run: $(STAMP) $(VENDOR) system-deps
	$(BIN)/telemed serve

test: $(TEST_STAMP) $(VENDOR) system-deps system-deps-test lint typecheck pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# The suite waits on real servers, brokers and browsers more than it computes (one
# process used 0.8 of a core): three workers, each taking whole files (a file's tests
# may share what its first test built), ran it in 5 min instead of 9.5 on 2 cores.
TEST_WORKERS ?= 3
pytest: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# Browser libraries from the npm registry, copied into static/vendor (never a CDN).
$(VENDOR): package.json package-lock.json
	@sh scripts/system-deps.sh npm
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p static/vendor
	cp node_modules/socket.io-client/dist/socket.io.min.js static/vendor/
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css static/vendor/
	@touch $@

# The patient pages' translations (babel.cfg, telemed/i18n.py): extract the messages
# into telemed/locale/messages.pot, merge them into each language's .po (then translate
# the new and fuzzy entries there), and compile each .po as a check. The server compiles
# the .po files in memory at start-up: there is no .mo file to build or commit.
# A new language: $(BIN)/pybabel init -D messages -i telemed/locale/messages.pot -d telemed/locale -l LANG
LOCALE := telemed/locale
translations: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg --no-location --sort-output --project=telemed \
		--copyright-holder="telemed contributors" -o $(LOCALE)/messages.pot .
	$(BIN)/pybabel update -D messages -i $(LOCALE)/messages.pot -d $(LOCALE) --ignore-obsolete
	@for po in $(LOCALE)/*/LC_MESSAGES/messages.po; do \
		lang=$$(basename $$(dirname $$(dirname $$po))); \
		$(BIN)/pybabel compile --statistics -D messages -l $$lang -i $$po -o /dev/null || exit 1; \
	done

# Debian packages: installed when running as root, otherwise a clear message.
system-deps:
	@sh scripts/system-deps.sh mosquitto

system-deps-test:
	@sh scripts/system-deps.sh chromium
	@sh scripts/system-deps.sh redis

bench: $(TEST_STAMP)
	@for b in bench/*.py; do [ -e "$$b" ] && $(BIN)/python "$$b"; done; true

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache node_modules static/vendor
