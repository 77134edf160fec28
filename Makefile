# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the CPU builds of torch and torchvision come from. Empty: pip's own configuration (a machine whose pip
# serves the CPU wheels, as this project's CI does). PyPI's Linux torch is a CUDA build with nvidia-* packages, so
# on a machine with internet pass the PyTorch CPU index: make test TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_CPU_INDEX ?=
TORCH_INDEX_OPT := $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX),)

.PHONY: demo test quick install clean

$(BIN)/totalgen-eval: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(TORCH_INDEX_OPT) torch==2.13.0 torchvision==0.28.0
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
