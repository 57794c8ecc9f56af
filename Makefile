# `make quickstart` runs the main job on the embedded default; `make test` runs the test suite.
# Both create the virtual environment in .venv from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: env quickstart test test-heavy bench clean

env: $(STAMP)

# Install order matters: the CPU torch wheel first; sam2 and deepspeed are sdists built against it
# without build isolation (so the build does not fetch another torch), sam2 without its declared
# torchvision dependency, which only its automatic-mask-generator and image-predictor transforms use.
# Last, DeepSpeed's CPU communication op is compiled once (into torch's extension cache), which
# every DeepSpeed start on CPU would otherwise do on first use: about a minute on 2 cores.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q "torch==2.13.0"
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.19,<0.20"
	$(BIN)/pip install -q -e ".[dev,demo]"
	$(BIN)/python -m pipelines.deepspeed_ops
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/salma quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -m "not heavy and not gpu" --timeout=900 $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m "heavy" --timeout=3600 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
