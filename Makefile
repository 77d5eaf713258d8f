# make test   : set up .venv (CPU build of torch) and run the test suite
# make bench  : run the benchmark suite (timings on a CUDA GPU; checks only on CPU)
# make demo   : train the digits demo, nnlib against torch.nn
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
JOBS   ?= auto

.PHONY: test bench demo compile clean

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/triton-3.6 triton==3.6.0   # compile check only
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest tests -n $(JOBS) -q

bench: $(VENV)/.installed
	$(PY) -m bench $(BENCH_ARGS)

demo: $(VENV)/.installed
	$(PY) -m nnlib.demo $(DEMO_ARGS)

compile: $(VENV)/.installed
	$(PY) -m kernels._compile

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
