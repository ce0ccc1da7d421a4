# Set-up on a fresh machine: `make train` (venv + install + train on the embedded synthetic set) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# make test's pytest-xdist workers: the suite's processes share out the cores (tests/conftest.py).
TEST_WORKERS ?= 2
# The offline GPU machine's Python, for `make gpu-wheels` (x86_64, manylinux).
GPU_PYTHON ?= 3.12
GPU_WHEELS_MAX_MIB := 64
GPU_SITE ?= /tmp/semseg-site
# Published only as sdists (pure Python): downloaded as such and built into py3-none-any wheels here.
GPU_SDISTS := antlr4-python3-runtime

.PHONY: install train test test-all bench lint clean gpu-wheels gpu-check gpu-camvid

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes; the stamp keeps `make test` from reinstalling every time.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $@

train: install
	$(PY) scripts/train.py data=synthetic $(ARGS)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-all: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "slow or not slow"

bench: install
	$(PY) scripts/benchmark.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check src scripts tests
	$(VENV)/bin/ruff format --check src scripts tests

clean:
	rm -rf outputs multirun .pytest_cache

# Wheels of gpu/wheels.txt for the offline GPU machine (Python $(GPU_PYTHON), x86_64) into .whl/, at most 64 MiB.
gpu-wheels:
	rm -rf .whl && $(PYTHON) -m pip download --no-deps --only-binary=:all: --no-binary=$(GPU_SDISTS) \
		--python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r gpu/wheels.txt
	for sdist in .whl/*.tar.gz; do test ! -e "$$sdist" || { $(PYTHON) -m pip wheel --quiet --no-deps -w .whl "$$sdist" && rm "$$sdist"; } || exit 1; done
	@! ls .whl | grep -v -e '-none-any\.whl$$' -e '-manylinux[0-9a-z_.]*_x86_64\.whl$$' || { echo "gpu-wheels: the files above are neither pure-python nor manylinux x86_64 wheels" >&2; exit 1; }
	du -sh .whl
	@test $$(du -sb .whl | cut -f1) -le $$(( $(GPU_WHEELS_MAX_MIB) * 1024 * 1024 )) || { echo "gpu-wheels: .whl exceeds $(GPU_WHEELS_MAX_MIB) MiB" >&2; exit 1; }

# On the GPU machine (no network; its python3 has torch, lightning, timm, torchmetrics, opencv, onnx):
# the wheels of `make gpu-wheels`, then every GPU figure in one command (conf/bench/gpu.yaml).
# ARGS="hydra.run.dir=<folder>" says where benchmark.json goes.
gpu-check:
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE):src python3 scripts/benchmark.py trainer=gpu bench=gpu data.batch_size=16 $(ARGS)

# gpu-check's follow-up: experiment=camvid_gpu on the GPU machine (after gpu-check installed the
# wheels), CamVid laid out as semseg's folder at CAMVID; prints the run's val mIoU and wall clock.
CAMVID ?= data/camvid
gpu-camvid:
	PYTHONPATH=$(GPU_SITE):src python3 scripts/train.py experiment=camvid_gpu data.root=$(CAMVID) logger=csv $(ARGS)
