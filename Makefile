# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the CPU builds of torch and torchvision (PyPI's Linux torch is a CUDA build with nvidia-* packages); an extra
# index, so an offline mirror or a local wheel folder still serves them
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test quick install clean

$(BIN)/totalgen-eval: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt --extra-index-url $(TORCH_CPU_INDEX) torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,seg]"
	touch $@

install: $(BIN)/totalgen-eval

demo: install
	$(BIN)/totalgen-eval demo

test: install
	$(BIN)/python -m pytest -q

# the edit-test loop: the suite without the tests marked slow (`make test`, what CI runs, runs them all)
quick: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-results .pytest_cache
