# Two commands in the README's quick start: `make demo` and `make test`.
PY := .venv/bin/python
PORT ?= 8188
PYTEST_ARGS ?=
# ComfyUI base directory of `make serve` (models/, input/, output/, user/ live there)
SERVE_BASE ?= $(or $(TTM_SERVE_BASE),.comfyui/serve)

.PHONY: setup demo test serve bench-native clean

setup:  ## build .venv (torch, deps, test tools), .comfyui/ComfyUI and .comfyui/frontends/ (newest frontend) from nothing; idempotent
	bash tools/setup_env.sh

demo: setup  ## start a headless ComfyUI, queue the shipped workflow, print the mp4's path last
	$(PY) tools/demo.py

test: setup  ## the whole test suite (unit, real ComfyUI server, headless Chromium)
	bash tools/setup_browser.sh
	$(PY) -m pytest $(PYTEST_ARGS)

serve: setup  ## the pack in the project's ComfyUI on 127.0.0.1:$(PORT), foreground, stop with SIGTERM
	$(PY) tools/comfy_harness.py --port $(PORT) --base $(SERVE_BASE)

bench-native: setup  ## one sampling step of a random-weight native Wan, patched vs unpatched -> JSON at $(OUT)
	$(or $(TTM_COMFYUI_PYTHON),$(PY)) tools/bench_native.py --out $(or $(OUT),artifacts/bench-native.json)

clean:  ## remove the environment and every ComfyUI run folder
	rm -rf .venv .comfyui artifacts
