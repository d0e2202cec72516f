# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SPEC   ?= specs/fashion-mnist/resnet20.res
DEMO_ITERATIONS ?= 1500

.PHONY: setup test demo goldens bench data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[torch,jax,dev]'
	touch $@

test: setup
	$(PY) -m pytest -q -n 2

goldens: setup
	$(PY) -m tests.regenerate_goldens

clean:
	rm -rf $(VENV) runs
