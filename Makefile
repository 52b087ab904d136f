# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both build .venv from nothing (CPU torch first, so pip never pulls a CUDA build).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= render,gpu_render,sources,s3,report,dev

.PHONY: demo test bench sysdeps venv clean

venv: $(STAMP)

sysdeps:
	@./.ci/sysdeps.sh

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trellis-data build --spec ray_configs/specs/demo.yaml --root ./demo_data

test: $(STAMP)
	$(PY) -m pytest -q -m "not cluster" tests
	$(PY) -m pytest -q -m cluster tests || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo_data
