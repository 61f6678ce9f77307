# The two commands of the README, and the pieces they are made of.
#   make demo   sets everything up and runs the main job
#   make test   sets everything up and runs the tests (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fieldkit-installed
RUN    ?= runs/digits-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch is pinned first: an unpinned torch (or accelerate/peft pulling one) resolves to a CUDA build of
# several GB; once 2.13.0 (CPU) is in, the library's range `torch>=2.6` installs nothing more.
$(STAMP): pyproject.toml plugins/fieldkit-plugin-sd3/pyproject.toml plugins/fieldkit-plugin-digits/pyproject.toml \
		plugins/fieldkit-plugin-zimage/pyproject.toml plugins/fieldkit-plugin-flux/pyproject.toml \
		plugins/fieldkit-plugin-qwenimage/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,trackers]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e plugins/fieldkit-plugin-sd3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e plugins/fieldkit-plugin-digits
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e plugins/fieldkit-plugin-zimage
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e plugins/fieldkit-plugin-flux
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e plugins/fieldkit-plugin-qwenimage
	touch $(STAMP)

demo: setup
	$(BIN)/fieldkit distill examples/digits/graph.yaml --out $(RUN)

# The tests run after the linters and the type checker, so CI (.ci/run) enforces all three.
test: setup lint
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check fieldkit plugins tests benchmarks docs examples
	$(BIN)/ruff format --check fieldkit plugins tests benchmarks docs examples
	$(BIN)/mypy

# CPU benchmarks (ratios measured in one process; see docs/performance.md). benchmarks/gpu.sh is for a GPU.
bench: setup
	for b in engine_overhead guidance rollout dense attention; do $(BIN)/python benchmarks/$$b.py --threads 1 || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
