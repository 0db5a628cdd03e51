# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATA    ?= data
SHARDS  ?= shards
RUNS    ?= runs
export HF_HUB_OFFLINE := 1

.PHONY: demo test install browser bench bench-scale clean

# pip's own retries cover a refused connection; --resume-retries (pip >= 25.1, hence the upgrade)
# continues a wheel cut off mid-download (CI once lost DALI's 199 MB wheel at 57 MB, six times
# over); RETRY starts the whole command again when even that fails. Three tries, then the error.
RETRY   := sh -c 'for try in 1 2 3; do "$$@" && exit 0; echo "make: $$* failed (try $$try of 3)" >&2; [ $$try = 3 ] || sleep 20; done; exit 1' retry

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp re-installs when pyproject.toml changes. pip is upgraded here, not with the venv, so
# that an upgrade cut off by the network is tried again by the next make.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(RETRY) $(BIN)/pip install -q --retries 10 --upgrade 'pip>=25.1'
	$(RETRY) $(BIN)/pip install -q --retries 10 --resume-retries 50 -e '.[dev,dali]'
	touch $@

install: $(VENV)/.installed

# Issue 18: the review page's browser test drives Debian's Chromium (Playwright's own browser
# download is not reachable). Idempotent; where it cannot be installed the test skips.
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
		|| echo "make: could not install chromium; tests/test_review_browser.py will skip"

test: install browser
	$(BIN)/python -m pytest

$(DATA)/mnist/.done: | install
	$(BIN)/python tools/fetch_mnist.py $(DATA)/mnist
	touch $@

$(SHARDS)/mnist.json: $(DATA)/mnist/.done
	$(BIN)/python tools/make_shards.py mnist $(DATA)/mnist --out $(SHARDS) --name mnist --workers 2

demo: install $(SHARDS)/mnist.json
	$(BIN)/python tools/demo.py --shards $(SHARDS) --runs $(RUNS)

# Benchmarks (BENCHMARKS.md): minutes on 2 cores; not part of the tests.
bench: install
	$(BIN)/python tools/bench_pipeline.py --count 1000 --repeats 3 --pass-repeat 12   # warm: start-up under ~5% of a pass (BENCHMARKS.md)
	$(BIN)/python tools/bench_step.py --model resnet50 --image-size 224 --batch-size 8 --steps 5 --warmup 3
	$(BIN)/python tools/bench_step.py --model mnist_cnn --image-size 28 --batch-size 256 --steps 20 --warmup 5
	$(BIN)/python tools/bench_shards.py --count 4000
	$(BIN)/python tools/bench_rank_memory.py

# Issue 16: every stage (synth, make_shards, verify, a train epoch, rank_labels) at each N,
# as a JSON table (BENCHMARKS.md "Scaling"). Hours and ~10 GB of scratch at 10^6 on 2 cores.
SCALE_N ?= 10000,100000,1000000
bench-scale: install
	$(BIN)/python tools/bench_scale.py --n $(SCALE_N) --work $(DATA)/bench_scale --json $(DATA)/bench_scale/scale.json

clean:
	rm -rf $(RUNS) $(SHARDS)
