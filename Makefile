# Two entry points: `make demo` and `make test`. Both create/update .venv idempotently and pin torch.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semiseg-installed
TORCH := torch==2.13.0

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/semiseg demo --out demo_output

test: install
	$(PY) -m pytest -q

clean:
	rm -rf demo_output .pytest_cache
