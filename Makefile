# Everything installs from scratch into .venv; `make demo` and `make test` are the two Quickstart commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg constraints.txt pyproject.toml
	$(PIP) install -c constraints.txt -e '.[test,s3,dask]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/make_sample_dataset.py sample --per_class 60 --seed 0
	$(PY) -m shardgen build sample/COVID-19_Radiography_Dataset demo-out --overwrite
	$(PY) -m shardgen verify demo-out
	$(PY) -m shardgen info demo-out
	$(PY) -m shardgen preview demo-out --split train --per_class 8 --out demo-preview.png --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -rs

bench: $(STAMP)
	$(PY) tools/bench_build.py
	$(PY) tools/bench_loader.py

clean:
	rm -rf $(VENV) sample demo-out bench-out
