# One-command entry points. Every target creates or refreshes .venv itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed

FHIR_SERVER_DEPS := fhir_sandbox/node_modules/.package-lock.json

.PHONY: run demo test lint bench check-cards clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(RUNTIME_STAMP)

## run: serve on http://127.0.0.1:8080 (development profile, SQLite under var/)
run: $(RUNTIME_STAMP)
	$(BIN)/cds-service serve --host 127.0.0.1 --port 8080

## lint: ruff, ruff format, mypy --strict, and the rule pack check
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cds-service check-cards

# The local Medplum FHIR server (fhir_sandbox/) that the integration tests, the benchmark and the
# demo start (the tests skip with a reason where Node is absent).
$(FHIR_SERVER_DEPS): fhir_sandbox/package-lock.json
	if command -v npm >/dev/null; then cd fhir_sandbox && npm ci --no-audit --no-fund --loglevel=error; fi

## demo: the local FHIR server seeded with the fixtures' patients, and the service (needs Node.js)
demo: $(RUNTIME_STAMP) $(FHIR_SERVER_DEPS)
	@command -v npm >/dev/null || { echo "make demo needs Node.js >= 20 and npm on PATH" >&2; exit 2; }
	$(BIN)/cds-service demo

## test: the whole suite, after lint
test: lint $(FHIR_SERVER_DEPS)
	$(BIN)/pytest

## bench: in-process and HTTP benchmark (not a test; installs wrk when missing)
bench: $(TEST_STAMP) $(FHIR_SERVER_DEPS)
	$(BIN)/python bench/bench.py

## fuzz: 20,000 generated requests per POST endpoint from a random seed, printed (CDS_FUZZ_SEED=N repeats a run)
.PHONY: fuzz
fuzz: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/test_fuzz.py

## soak: 60 s of mixed load, then 60 s with 5% FHIR errors (not a test; SOAK_ARGS="--duration 10")
.PHONY: soak
soak: $(TEST_STAMP) $(FHIR_SERVER_DEPS)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

## mutation: mutmut over the rule, fact, claim-edit and card modules; score, survivors, gate at 90%
.PHONY: mutation mutation-sample
mutation: $(TEST_STAMP)
	$(BIN)/python tools/mutation_gate.py

## mutation-sample: the bounded, stable sample CI runs (about a tenth of the mutants)
mutation-sample: $(TEST_STAMP)
	$(BIN)/python tools/mutation_gate.py --fraction $(MUTATION_SAMPLE)

MUTATION_SAMPLE ?= 0.1

## eval: score the service against the labelled corpus in eval/cases (fails below target; eval/README.md)
.PHONY: eval
eval: $(TEST_STAMP)
	$(BIN)/python eval/run.py

check-cards: $(RUNTIME_STAMP)
	$(BIN)/cds-service check-cards

clean:
	rm -rf $(VENV) var dist build mutants .pytest_cache .mypy_cache .ruff_cache fhir_sandbox/node_modules
