# The two set-up commands of the README:
#   make demo   create .venv, install bigtrain, run the whole pipeline on the embedded corpus (CPU, 2 ranks)
#   make test   create .venv, install bigtrain[dev], run the test suite
#   make lint   ruff check (rules in pyproject.toml [tool.ruff])
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# the versions the suite last passed with (constraints.txt); `make CONSTRAINTS= test` takes the newest allowed
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bigtrain-installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a bare "torch" requirement would pull the newest CUDA build (several GB)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,plot]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash tools/demo.sh

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check bigtrain tests tools

test-fast: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
