# Two commands in the README's quick start: `make demo` and `make test`. Every other target is in the README too.
PY := .venv/bin/python
PORT ?= 8188
PYTEST_ARGS ?=
# ComfyUI base directory of `make serve` (models/, input/, output/, user/ live there); relative paths are
# relative to this folder (where make runs), not to ComfyUI's.
SERVE_BASE ?= $(or $(TTM_SERVE_BASE),.comfyui/serve)
COMFY_PY := $(or $(TTM_COMFYUI_PYTHON),$(PY))

.PHONY: setup demo test test-fast lint serve bench-attention bench-stage2 bench-native bench-encode bench-flow-track \
	bench-track-memory bench-plan bench-modelfree clean

setup:  ## build .venv (torch, deps, test tools), .comfyui/ComfyUI and .comfyui/frontends/ (newest frontend) from nothing; idempotent
	bash tools/setup_env.sh

demo: setup  ## start a headless ComfyUI, queue the shipped workflow, print the mp4's path last
	$(PY) tools/demo.py

test: setup  ## lint, type check, then the whole suite: library, in-process ComfyUI, real servers, Chromium, ttm-batch
	bash tools/setup_browser.sh
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## the library's unit tests (no ComfyUI server, no browser): the development lane, under 2 minutes
	$(PY) -m pytest tests/core -m "not slow" -q $(PYTEST_ARGS)

lint: setup  ## ruff (rules in pyproject.toml) and mypy on ttm_core
	$(PY) -m ruff check .
	$(PY) -m mypy

serve: setup  ## the pack in the project's ComfyUI on 127.0.0.1:$(PORT), foreground, stop with Ctrl-C or SIGTERM
	$(PY) tools/comfy_harness.py --port $(PORT) --base $(abspath $(SERVE_BASE))

bench-attention: setup  ## masked-attention kernel: dense vs naive vs grouped -> JSON at $(OUT)
	$(PY) -m benchmarks attention --json $(or $(OUT),artifacts/bench-attention.json) $(BENCH_ARGS)

bench-stage2: setup  ## diffusers Stage 2 step and one-step call, ours vs stock -> JSON at $(OUT)
	$(PY) -m benchmarks stage2 --json $(or $(OUT),artifacts/bench-stage2.json) $(BENCH_ARGS)

bench-native: setup  ## one sampling step of a random-weight native Wan, patched vs unpatched -> JSON at $(OUT)
	$(COMFY_PY) -m benchmarks native --out $(or $(OUT),artifacts/bench-native.json) $(BENCH_ARGS)

bench-encode: setup  ## Video Combine's peak extra memory encoding 120 frames of 512x512
	$(PY) -m benchmarks encode --frames 120 --size 512 $(BENCH_ARGS)

bench-flow-track: setup  ## the flow tracker's frames/s and IoU at 832x480x81 per settings row -> JSON at $(OUT)
	$(PY) -m benchmarks flow-track --json $(or $(OUT),artifacts/bench-flow-track.json) $(BENCH_ARGS)

bench-track-memory: setup  ## tracking peak memory vs clip length, streamed vs all frames at once -> JSON at $(OUT)
	$(PY) -m benchmarks track-memory --json $(or $(OUT),artifacts/bench-track-memory.json) $(BENCH_ARGS)

bench-modelfree: setup  ## model-free chain vs integer-paste cut-and-drag, 832x480x81, 1/3/8 objects -> JSON at $(OUT)
	$(PY) -m benchmarks modelfree --json $(or $(OUT),artifacts/bench-modelfree.json) $(BENCH_ARGS)

bench-plan: setup  ## Stage 1 plan backend: s/clip with the tiny local LLM, constrained vs not -> JSON at $(OUT)
	$(PY) -m benchmarks plan --json $(or $(OUT),artifacts/bench-plan.json) $(BENCH_ARGS)

clean:  ## remove the environment and every ComfyUI run folder
	rm -rf .venv .comfyui artifacts
