# Two commands do everything: `make demo` and `make test`. Each creates .venv when missing and
# installs the project there first: `make demo` the runtime and the labeling page ([web]),
# `make test` also the test tools ([dev]).
#
# TORCH=cpu (e.g. `make demo TORCH=cpu`) first installs PyTorch's CPU-only build from PyTorch's
# own index, without the NVIDIA libraries and Triton of the CUDA build that PyPI serves on Linux
# (5.3 GB installed for torch 2.14 + CUDA 13). It applies while .venv is set up, so start from a
# fresh one (`rm -rf .venv`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
TORCH ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# One stamp per extras set; the [dev] install includes [web], so it marks both as done.
DEMO_STAMP := $(VENV)/.coincide-web
TEST_STAMP := $(VENV)/.coincide-dev

ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH) is not a choice; use TORCH=cpu for the CPU-only build, or leave it out)
endif

.PHONY: demo test lint install clean

# $(1): the extras to install the project with.
define setup
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(PIP) --index-url $(TORCH_CPU_INDEX) torch torchvision)
	$(PIP) -e '.[$(1)]'
endef

$(DEMO_STAMP): pyproject.toml
	$(call setup,web)
	@touch $@

$(TEST_STAMP): pyproject.toml
	$(call setup,dev)
	@touch $@ $(DEMO_STAMP)

install: $(DEMO_STAMP)

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

demo: $(DEMO_STAMP)
	$(BIN)/python -m coincide.stages.demo --out $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
