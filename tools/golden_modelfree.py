"""Write the model-free path's golden outputs (``tests/data/golden_modelfree.npz``), after a deliberate change.

Renders every procedural case of ``tests/support/modelfree_scenes.py`` (label video and warp frames) with the
current code. ``tests/core/test_modelfree_golden.py`` compares against the file; regenerate only when a change
of output is intended, and say so in the commit.

    .venv/bin/python tools/golden_modelfree.py [--out tests/data/golden_modelfree.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "support"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from modelfree_scenes import CASES, GOLDEN_MODELFREE, render, to_uint8  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_MODELFREE)
    args = parser.parse_args(argv)
    arrays: dict[str, np.ndarray] = {}
    for name in CASES:
        labels, frames = render(name)
        arrays[f"{name}/labels"] = labels.numpy()
        arrays[f"{name}/frames"] = to_uint8(frames).numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sys.stdout.write(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {len(CASES)} cases)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
