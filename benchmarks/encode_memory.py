"""Peak extra memory of encoding IMAGE frames to mp4, versus the size of the frames.

Runs in its own process: makes float32 frames, resets the kernel's peak-RSS counter
(/proc/self/clear_refs, Linux), encodes with ttm_core.media.encode_video (what the
VideoCombine node calls), and reports the new peak minus the RSS before encoding.
Run: make bench-encode (python -m benchmarks encode --frames 120 --size 512)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import PeakRSS  # noqa: E402
from ttm_core.media import encode_video  # noqa: E402

LOG = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks encode", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--format", default="mp4")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the figures")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.manual_seed(0)
    frames = torch.rand(options.frames, options.size, options.size, 3)
    frames_mib = frames.numel() * 4 / 2**20
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with PeakRSS() as peak:
            encode_video(frames, Path(folder), "m", options.format, fps=16.0)
        seconds = time.perf_counter() - started
    figures = {"frames": options.frames, "size": options.size, "format": options.format,
               "frames_mib": round(frames_mib, 1), "extra_peak_mib": round(peak.extra_kib / 1024, 1),
               "ratio": round(peak.extra_kib / 1024 / frames_mib, 4), "seconds": round(seconds, 2)}
    LOG.info("%d frames of %dx%d (%.0f MiB float32) -> %s: extra peak %.1f MiB (%.1f%% of the frames), %.1f s",
             options.frames, options.size, options.size, frames_mib, options.format, figures["extra_peak_mib"],
             100 * figures["ratio"], seconds)
    if options.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
