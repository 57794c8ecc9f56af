# `make quickstart` runs the main job on the embedded default; `make test` runs the test suite.
# Both create the virtual environment in .venv from nothing when it is missing (CPU PyTorch).
# `make image` builds the cluster image (docs/cluster.md).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# The extras installed with the project (demo: `salma demo`'s Gradio app).
EXTRAS ?= dev demo
# How the project itself is installed: editable, for development. `make install VENV=DIR PROJECT=.
# EXTRAS=` is a plain (non-editable) install into a fresh venv DIR (tests/cluster/test_install.py).
PROJECT ?= -e .
# The CPU build of PyTorch: a local wheel on the machines this project is developed on. Elsewhere
# point pip at PyTorch's CPU index first (docs/cluster.md), or this fetches a CUDA build of several GB.
CPU_TORCH ?= torch==2.13.0
# The linters the static checks of tests/cluster run, in a venv of their own (their dependencies
# would change the project's).
TOOLS = .venv-tools
TOOLS_STAMP = $(TOOLS)/.installed
IMAGE ?= salma:0.1.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: env install tools image quickstart test test-heavy bench clean

env: $(STAMP)

# Install order matters. First the CPU torch. Then everything the project requires but sam2: the
# source distributions among them (deepspeed) build against that torch without build isolation, so
# a build does not fetch another torch. Last sam2 and the project without their dependencies: sam2
# declares torchvision, which SALMA never imports (sam2 uses it only in its image-predictor
# transforms and automatic mask generator), and PyPI's torchvision would replace the CPU torch with
# a CUDA build. Installed in this order pip has no missing requirement to complain about; `pip
# check` still names sam2's torchvision.
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q "$(CPU_TORCH)"
	$(BIN)/python cluster/requirements.py --without sam2 $(addprefix --extra ,$(EXTRAS)) > $(VENV)/requirements.txt
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -r $(VENV)/requirements.txt
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps "$$($(BIN)/python cluster/requirements.py --only sam2)"
	$(BIN)/pip install -q --no-build-isolation --no-deps $(PROJECT)
	@echo "installed into $(VENV); sam2 without torchvision (on purpose: see the Makefile's install target)"

# After the install, DeepSpeed's CPU communication op is compiled once into the venv
# (pipelines/deepspeed_ops.py), where every training process of this venv loads it from; on first
# use it would cost each of them about a minute on 2 cores.
$(STAMP): pyproject.toml Makefile cluster/requirements.py
	$(MAKE) --no-print-directory install
	$(BIN)/python -m pipelines.deepspeed_ops
	touch $(STAMP)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): cluster/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q -r cluster/tools-requirements.txt
	touch $(TOOLS_STAMP)

# Needs a Docker engine with BuildKit; no GPU.
image:
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine answers here (docker info failed); build where one runs (docs/cluster.md)" >&2; exit 1; }
	docker build -f cluster/Dockerfile -t $(IMAGE) .

quickstart: $(STAMP)
	$(BIN)/salma quickstart

# SALMA_TOOLS_BIN makes the static checks of tests/cluster fail, not skip, when a linter is missing.
test: $(STAMP) $(TOOLS_STAMP)
	SALMA_TOOLS_BIN=$(abspath $(TOOLS))/bin $(BIN)/python -m pytest -m "not heavy and not gpu" --timeout=900 $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m "heavy" --timeout=3600 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache build *.egg-info
