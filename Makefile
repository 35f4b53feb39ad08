# The two set-up commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install requirements.txt when missing or out of date.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m spot_jax demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

bench: $(STAMP)
	$(PY) -m spot_jax bench
