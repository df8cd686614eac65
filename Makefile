# Everything a fresh machine needs: `make demo` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
# test worker processes (pytest-xdist): with 2, a 2-core machine keeps both cores busy while one
# test waits on Ray or a subprocess (README: 1.25x); 0 runs the suite in this process
TEST_WORKERS ?= 2

.PHONY: venv lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: on the CPU machines this takes the local CPU wheel (see README).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,s3]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check facegs ray_jobs bench tests

test: lint
	$(BIN)/python -m pytest tests -v --durations=25 -n $(TEST_WORKERS)

test-fast: lint
	$(BIN)/python -m pytest tests -m "not slow" -q -n $(TEST_WORKERS)

demo: $(STAMP)
	$(BIN)/python -m ray_jobs.demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
