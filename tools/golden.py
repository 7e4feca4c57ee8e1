"""Write the golden frames of every shipped workflow (``tests/data/golden``), after a deliberate change.

Runs each shipped API workflow (``tests/support/golden.py`` explains the swaps) on real ComfyUI servers
with the tiny models and saves its frames. The suite's ``tests/server/test_golden.py`` compares against
them; regenerate only when a change of output is intended, and say so in the commit.

    .venv/bin/python tools/golden.py [--out tests/data/golden] [--only ttm_warp_paths_api.json ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "support", ROOT / "batch"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from golden import (  # noqa: E402
    DIFFUSERS,
    GOLDEN,
    NOT_ON_PROJECT_COMFYUI,
    STAGE1,
    TRAINED,
    frames_of,
    needs_native,
    prepared,
    save,
    stem,
)
from native_wan import write_native_wan  # noqa: E402
from tiny_diffusers import save_tiny  # noqa: E402
from tiny_models import build_tiny_models  # noqa: E402
from tools.comfy_harness import ComfyServer  # noqa: E402
from trained_checkpoints import install_stage1_models, install_trained_models  # noqa: E402
from ttm_batch.client import ComfyClient  # noqa: E402

LOG = logging.getLogger("golden")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN)
    parser.add_argument("--only", nargs="*", default=None, help="API workflow file names (default: all shipped)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[golden] %(message)s")
    options.out.mkdir(parents=True, exist_ok=True)
    names = options.only or sorted(p.name for p in (ROOT / "workflows").glob("*_api.json")
                                   if stem(p.name) not in NOT_ON_PROJECT_COMFYUI)
    for name in names:
        if stem(name) in NOT_ON_PROJECT_COMFYUI:
            parser.error(f"{name} has no golden frames: {NOT_ON_PROJECT_COMFYUI[stem(name)]}")
    with tempfile.TemporaryDirectory(prefix="ttm-golden-") as tmp:
        for native in (False, True):
            batch = [n for n in names if needs_native(n) == native]
            if not batch:
                continue
            base = Path(tmp) / ("native" if native else "plain")
            tiny = build_tiny_models(Path(tmp) / f"tiny-models-{native}")
            tiny.install(base / "models")  # SAM 2 / LLM / detector for Stage 1, beside any Wan files
            if native:
                write_native_wan(base / "models")
                if any(stem(n) in TRAINED for n in batch):
                    install_trained_models(base / "models")
            else:
                for family, _ in DIFFUSERS.values():
                    save_tiny(family, base / "models" / "diffusers" / "tiny" / family)
                if any(stem(n) in STAGE1 for n in batch):
                    install_stage1_models(base / "models")
            with ComfyServer(base) as server:
                client = ComfyClient(server.url, timeout=120)
                for name in batch:
                    graph = prepared(name, json.loads((ROOT / "workflows" / name).read_text()))
                    frames = frames_of(client, client.run(graph, timeout=900))
                    LOG.info("%s: %s -> %s", name, frames.shape, save(options.out, name, frames, 3 if native else 5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
