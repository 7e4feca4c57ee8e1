"""Snapshot the /object_info of the core nodes a shipped workflow uses, from a running ComfyUI (developer tool).

CI's ComfyUI (0.3.75) lacks some core nodes a shipped workflow needs (Wan-Move's WanMoveTrackToVideo came with
ComfyUI 0.8): tests/server/test_wanmove_workflow.py checks the workflow against the schema ComfyUI itself
served, kept in ``tests/data/core_schemas/comfyui-<version>.json`` with where it came from.

    TTM_COMFYUI_DIR=/path/to/ComfyUI-0.8.0 .venv/bin/python tools/core_schemas.py \\
        workflows/ttm_wanmove_tracks_api.json \\
        --origin "ComfyUI v0.8.0 release commit fc0cb10bcbee6e73ed3caf34c27f7bde4559a07f"
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.comfy_harness import ComfyInstall, ComfyServer  # noqa: E402

OUT = ROOT / "tests" / "data" / "core_schemas"


def comfy_version(install: ComfyInstall) -> str:
    namespace: dict[str, str] = {}
    exec((install.comfy_dir / "comfyui_version.py").read_text(), namespace)  # ComfyUI's own version file
    return namespace["__version__"]


def git_commit(folder: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="+", type=Path, help="API workflows whose core nodes to snapshot")
    parser.add_argument("--origin", default=None,
                        help="where that ComfyUI tree came from (release, commit), recorded in the snapshot")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    types = sorted({node["class_type"] for path in options.workflows
                    for node in json.loads(path.read_text()).values() if not node["class_type"].startswith("TTM_")})
    install = ComfyInstall.locate()
    version = comfy_version(install)
    with tempfile.TemporaryDirectory(prefix="ttm-schemas-") as base, ComfyServer(Path(base), install=install) as server:
        with urllib.request.urlopen(server.url + "/object_info", timeout=60) as response:
            info = json.loads(response.read())
    missing = [t for t in types if t not in info]
    if missing:
        raise SystemExit(f"ComfyUI {version} at {install.comfy_dir} has no {missing}")
    snapshot = {
        "comfyui_version": version,
        "source": {"what": f"GET /object_info of ComfyUI {version} (main.py --cpu, an empty models folder: model "
                           "file combos list no files), started by tools/comfy_harness.py",
                   "comfyui_dir": install.comfy_dir.name, "git_commit": git_commit(install.comfy_dir),
                   "origin": options.origin,
                   "made_by": "tools/core_schemas.py " + " ".join(str(p) for p in options.workflows)},
        "nodes": {t: info[t] for t in types},
    }
    target = OUT / f"comfyui-{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(snapshot, indent=1, sort_keys=False) + "\n")
    logging.info("wrote %s: %s", target, ", ".join(types))
    return 0


if __name__ == "__main__":
    sys.exit(main())
