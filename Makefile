# The two set-up commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install requirements.txt when missing or out of date; `make test` adds
# requirements-test.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install bench

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The test tools (pytest, xdist, the local GCS emulator) on top: not part of what users install.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m spot_jax demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=25 tests

bench: $(STAMP)
	$(PY) -m spot_jax bench
