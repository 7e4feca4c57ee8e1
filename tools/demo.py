"""`make demo`: run the shipped model-free workflow in a headless ComfyUI, end to end.

Starts ComfyUI with the pack (base directory .comfyui/demo), queues
workflows/ttm_warp_paths_api.json through the HTTP API, waits for it and prints the
absolute path of the mp4 it wrote as the last line of output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "batch"):  # the repo (tools), and batch/ for ttm_batch (its own distribution)
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from tools.comfy_harness import ComfyServer  # noqa: E402
from ttm_batch.client import ComfyClient, ComfyError  # noqa: E402

LOG = logging.getLogger("ttm.demo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "ttm_warp_paths_api.json")
    parser.add_argument("--base", type=Path, default=ROOT / ".comfyui" / "demo",
                        help="ComfyUI base directory (input, output, models, user)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s", stream=sys.stderr)
    prompt = json.loads(options.workflow.read_text())
    started = time.monotonic()
    with ComfyServer(options.base) as server:
        LOG.info("ComfyUI ready on %s after %.1f s; queueing %s", server.url, time.monotonic() - started,
                 options.workflow.name)
        try:
            result = ComfyClient(server.url).run(prompt, timeout=600)
        except ComfyError as err:
            LOG.error("%s", err)
            LOG.error("server log: %s", server.log_path)
            return 1
    videos = [f for f in result.files() if f.filename.endswith(".mp4") and f.type == "output"]
    if not videos:
        LOG.error("the workflow finished but reported no mp4 (outputs: %s)", list(result.files()))
        return 1
    path = (options.base / "output" / videos[0].subfolder / videos[0].filename).resolve()
    LOG.info("done in %.1f s", time.monotonic() - started)
    print(path)  # noqa: T201 - the mp4's path on stdout, last, is this command's result (make demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
