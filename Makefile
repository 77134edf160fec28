# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/totalgen-eval: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,seg]"
	touch $@

install: $(BIN)/totalgen-eval

demo: install
	$(BIN)/totalgen-eval demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-results .pytest_cache
