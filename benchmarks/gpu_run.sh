#!/usr/bin/env bash
# The real-size GPU benchmarks in ONE device call (README, Performance; docs/bench/gpu/README.md).
#
#   bash benchmarks/gpu_run.sh prepare   # on the CPU machine (PyPI reachable): wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu_run.sh run       # on the GPU machine: install .whl/, run `python -m benchmarks gpu`, JSON -> $OUT
#
# The GPU machine reaches no registry and its image has PyTorch, transformers and accelerate but not
# diffusers, torchsde (ComfyUI's samplers) or SageAttention, so `prepare` downloads those wheels here
# (pure-Python; Python 3.12 as there) and the device call carries them with ComfyUI:
#   run(command="bash benchmarks/gpu_run.sh run", carry=[".whl", ".comfyui/ComfyUI"], timeout_s=600)
# flash-attn publishes no wheels on PyPI (source only, an hour's CUDA build): its variants are reported
# as skipped unless a flash-attn wheel is put into .whl/ by other means.
#
# Time plan (one call, at most 600 s): wheel install ~10 s; the benchmark with --budget 500 (native
# 230 s at most, kernels 90 (FlexAttention compiles), cogvideox 60, train 120, native-720 with what is left, each part stopped
# at its cap and recorded as "timeout"); the outer `timeout 570` kills it all before the call's limit,
# and the JSON is rewritten after every part, so whatever finished comes back in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-run}" in
prepare)
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    mkdir -p .whl
    py="${PYTHON:-.venv/bin/python}"
    common=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl)
    "$py" -m pip download "${common[@]}" "diffusers==$("$py" -c 'import diffusers; print(diffusers.__version__)')" \
        importlib_metadata torchsde trampoline || exit 1
    "$py" -m pip download "${common[@]}" sageattention || echo "gpu_run: no SageAttention wheel; its variants will be skipped"
    "$py" -m pip download "${common[@]}" flash-attn || echo "gpu_run: no flash-attn wheel on PyPI; its variants will be skipped"
    du -sh .whl
    ;;
run)
    out="${OUT:-artifacts/gpu-run}"
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export TTM_COMFYUI_PYTHON="$(command -v python3)" TTM_COMFYUI_DIR="$PWD/.comfyui/ComfyUI" \
        TTM_NATIVE_WAN_CACHE=/tmp/ttm-native-wan PYTHONUNBUFFERED=1
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1
    python3 -m pip list 2>/dev/null | grep -iE '^(torch|diffusers|transformers|accelerate|sageattention|flash.attn|triton) ' \
        >"$out/packages.txt"
    timeout -k 10 570 python3 -m benchmarks gpu --size real --budget "${GPU_BUDGET_S:-500}" --json "$out/gpu.json" \
        >"$out/table.txt" 2>"$out/log.txt"
    rc=$?
    tail -c 12000 "$out/log.txt"
    cat "$out/table.txt"
    echo "gpu_run: exit $rc; copy $out/gpu.json to docs/bench/gpu/<date>.json and its table into the README"
    exit $rc
    ;;
*)
    echo "usage: bash benchmarks/gpu_run.sh prepare|run" >&2
    exit 2
    ;;
esac
