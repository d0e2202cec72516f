# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RESDSL := $(VENV)/bin/resdsl
FASHION_MNIST := /usr/share/datasets/fashion-mnist
DEMO_SPEC       ?= specs/fashion-mnist/resnet20.res
DEMO_PACKAGE    ?= generated/fashion_mnist_resnet20_torch
DEMO_ITERATIONS ?= 800

.PHONY: setup data test test-long test-fast demo goldens editors clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[torch,jax,dev,plot]'
	touch $@

# Fashion-MNIST from Debian's package (the only real data these machines can get).
data:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run  sudo apt-get install dataset-fashion-mnist"; exit 1; fi

# The suite but its long end-to-end runs (within 6 minutes on 2 quiet cores), then those runs
# (the trainer of every library spec in both backends, real-data runs, several processes, kills
# and resumes, the fuzzer): their constructs are covered by `make test` too, more cheaply.
# .ci/run runs both.
test: setup data
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not long"

test-long: setup data
	$(PY) -m pytest -q -n 2 --dist worksteal -m long

# The front end, the analysis, the printers and the goldens (about half a minute on 2 cores): the
# lane to run while changing the language or the compiler; `make test` before a commit.
FAST_TESTS := tests/test_language.py tests/test_errors.py tests/test_hostile.py tests/test_fmt.py \
	tests/test_cli.py tests/test_show.py tests/test_editors.py tests/test_style.py \
	tests/test_published_numbers.py tests/test_compiler.py tests/test_workflow.py \
	tests/test_torch_model.py::test_goldens_are_up_to_date
test-fast: setup
	$(PY) -m pytest -q -n 2 $(FAST_TESTS) -m "not slow" \
		-k "not random_definitions and not fuzzed and not code_names_its_own"

# The main job: compile a spec and train it on real data on the CPU (a few minutes on 2 cores).
demo: setup data
	$(RESDSL) summary $(DEMO_SPEC)
	$(RESDSL) compile $(DEMO_SPEC) --backend torch -o $(DEMO_PACKAGE)
	rm -rf runs/demo  # the demo's own run directory: a fresh run each time
	$(PY) $(DEMO_PACKAGE)/train.py --device cpu --iterations $(DEMO_ITERATIONS) --out runs/demo --checkpoint-every 200

goldens: setup
	$(PY) -m tests.regenerate_goldens

# The VS Code grammar's keywords from resdsl/grammar.lark (after the grammar gains a keyword).
editors:
	$(PYTHON) editors/vscode/generate_grammar.py

clean:
	rm -rf $(VENV) runs
