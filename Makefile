# One command from a fresh clone: `make test` creates .venv, installs egl with its
# dev extra, and runs the suite. Nothing relies on packages installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must come as a matching pair.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.egl-installed

.PHONY: install test test-fast demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The paper's comparison on the built-in benchmark, under 10 minutes on 2 CPU cores.
demo: $(STAMP)
	$(VENV)/bin/egl demo $(DEMO_ARGS)

# Micro-benchmarks against peers (captum, pytorch-grad-cam, torch-cam); not part of `make test`.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/saliency.py $(BENCH_ARGS)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/activations.py
	$(PY) benchmarks/input_grads.py
	$(PY) benchmarks/kernel.py --stages
	$(PY) benchmarks/kernel_sass.py
	$(PY) benchmarks/sync_check.py
	$(PY) benchmarks/alignment_precision.py
	$(PY) benchmarks/cam_variants.py
	$(PY) benchmarks/gradient_free.py
	$(PY) benchmarks/sanity.py
	$(PY) benchmarks/road.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
