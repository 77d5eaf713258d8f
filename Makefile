# make test   : set up .venv (CPU build of torch) and run the test suite
# make bench  : run the benchmark suite (timings on a CUDA GPU; checks only on CPU)
# make demo   : train the digits demo, nnlib against torch.nn
# make fuzz   : the differential fuzzers (tests/test_fuzz.py) with a long budget and random seeds
# make compile: the compile test for sm_90 and sm_80 under CI's triton and 3.6 - 3.8 (CI runs it after make test)
# make compat : nnlib.selftest --quick in the interpreters of tritons 3.6 - 3.8 (those torch 2.11 - 2.14 pin; CI runs it last)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
JOBS   ?= auto
# The tritons torch 2.11 - 2.14 pin, beside CI's (for the compile check and make compat only;
# kernels._compile.EXTRA_TRITONS names the same)
EXTRA_TRITONS = 3.6.0 3.7.1 3.8.0

.PHONY: test bench demo compile compat clean fuzz

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	for v in $(EXTRA_TRITONS); do $(PY) -m pip install --quiet --no-deps --target $(VENV)/triton-$${v%.*} triton==$$v || exit 1; done
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest tests -n $(JOBS) -q

bench: $(VENV)/.installed
	$(PY) -m bench $(BENCH_ARGS)

demo: $(VENV)/.installed
	$(PY) -m nnlib.demo $(DEMO_ARGS)

# HYPOTHESIS_PROFILE=fuzz (tests/conftest.py): many examples per test, a random seed per
# run, statistics (how often each known discrepancy showed). A failure prints a
# reproducer program; FUZZ_ARGS passes pytest options (-k conv2d, --hypothesis-seed=N).
fuzz: $(VENV)/.installed
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz.py -n $(JOBS) -q --hypothesis-show-statistics $(FUZZ_ARGS)

# The compile test over the whole matrix (sm_90 and sm_80, CI's triton and 3.6 - 3.8); make test
# compiles for sm_90 under CI's triton only. Registers and SASS of one module: $(PY) -m kernels._compile --sass conv
compile: $(VENV)/.installed
	NNLIB_COMPILE_MATRIX=full $(PY) -m pytest tests/test_compile.py -n $(JOBS) -q

# The kernels and their host code run under every triton pyproject admits: CI's runs the tests,
# this runs the selftest's sweep under 3.6, 3.7 and 3.8 (25 s each; the whole suite under one:
# PYTHONPATH=$PWD/.venv/triton-3.7:$PWD make test).
compat: $(VENV)/.installed
	for v in $(EXTRA_TRITONS); do PYTHONPATH=$(VENV)/triton-$${v%.*}:$(CURDIR) TRITON_INTERPRET=1 \
		$(PY) -m nnlib.selftest --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
