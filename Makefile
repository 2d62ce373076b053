# Two commands do all set-up on a fresh machine:
#   make train   create .venv, install, build the kernels, train SemiVL on the built-in synthetic world
#   make test    same set-up, then the whole test suite (what CI runs, after make lint)
# Everything else is optional: make test-fast (the tests not marked slow, under two minutes), setup, bench, lint,
# clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# Force the CUDA kernels to compile when a toolkit is present, even without a GPU (CI compile-checks the .cu files).
export SEMIVL_FAST_CUDA ?= auto
export MAX_JOBS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup train test test-fast bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel

$(VENV)/.deps: $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q "pybind11>=2.12" ninja pytest pytest-timeout ruff
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(shell find csrc -type f 2>/dev/null)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pip install -q -e ".[dev]" --no-build-isolation
	touch $@

setup: $(VENV)/.built

train: setup
	$(PY) -m semivl_fast.train $(ARGS)

test: setup
	SEMIVL_FAST_REQUIRE_EXT=1 $(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing selected, treated as success"; rc=0; fi; \
	exit $$rc

test-fast:
	$(MAKE) test ARGS='-m "not slow" $(ARGS)'

bench: setup
	$(PY) bench/decoder.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info semivl_fast/_C*.so semivl_fast/_build_config.py $(VENV)/.built
