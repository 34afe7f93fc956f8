# Two commands a user needs: `make run` (install + default experiment, offline) and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU wheel (on local disk here). GPU users: make install TORCH_SPEC="torch==<version>" (CUDA build).
TORCH_SPEC ?= torch==2.13.0
# import-linter's contracts (pyproject.toml), run by the same Python that make installs into
LINT_IMPORTS = $(PYTHON) -c "from importlinter.cli import lint_imports_command; lint_imports_command()"

.PHONY: install install-dev run test lint

install:
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .

install-dev:
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev,sweeps,optuna,m3e]"

run: install
	$(PYTHON) run.py +experiment=distillation_pays

test: install-dev
	$(PYTHON) -m ruff check .
	$(LINT_IMPORTS)
	$(PYTHON) -m pytest -n 2

lint:
	$(PYTHON) -m ruff check .
	$(LINT_IMPORTS)
