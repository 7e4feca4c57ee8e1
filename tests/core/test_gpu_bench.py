"""``python -m benchmarks gpu --size tiny``: every GPU benchmark's plumbing on the CPU (its figures mean nothing).

The real-size run needs a GPU (benchmarks/gpu_run.sh); this runs the same parts, each in its own
process as on the GPU, on tiny models, and checks the report's structure and that every ratio is a
positive finite number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import benchmarks.__main__ as cli
from benchmarks.gpu import PARTS, check_size
from ttm_core.errors import TTMInputError


def _cases(report: dict, part: str) -> list[dict]:
    body = report["parts"][part]
    assert body["status"] == "ok", body.get("log_tail", body)
    return body["cases"]


@pytest.mark.slow
def test_every_gpu_benchmark_at_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    assert cli.main(["gpu", "--size", "tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert json.loads(printed.strip().splitlines()[-1]) == report  # the JSON printed last is the one written
    assert report["size"] == "tiny" and list(report["parts"]) == list(PARTS)
    assert report["parts"]["native-720"]["status"] == "skipped"  # the same code as native at tiny size
    for part in ("native", "kernels", "cogvideox", "train"):
        assert f"\n{part} " in printed  # a table row per part

    native = {(c["model"], c["variant"]): c for c in _cases(report, "native")}
    i2v, ti2v = "tiny Wan 2.1 I2V layout", "tiny Wan 2.2 TI2V layout"
    assert set(native) == {(i2v, "unpatched"), (i2v, "strength 1"), (i2v, "blend 0.5"),
                           (i2v, "strength 1 + dual clock"), (ti2v, "unpatched"), (ti2v, "strength 1")}
    # through ComfyUI's own models: Wan 2.1 at 128x128x5, latents 2x16x16 -> 128 tokens; TI2V at 128 x 144,
    # latents 2x9x8 -> 9 rows padded to 10 by Wan's 2x2 patches -> 2x5x4 = 40 tokens
    assert native[(i2v, "strength 1")]["tokens"] == 128 and native[(ti2v, "strength 1")]["tokens"] == 40
    # the masked attention really ran in every patched case (no call passed through to stock attention)
    assert all(case["pass_through_notes"] == [] for case in native.values())
    assert native[(i2v, "strength 1")]["masked_blocks"] == 1  # the default K: a quarter of 4 blocks
    assert "fp8 weights: need CUDA compute capability >= 8.9" in report["parts"]["native"]["skipped"]

    kernels = {c["variant"]: c for c in _cases(report, "kernels")}
    assert {"dense", "dense_bool_mask", "ours_loop", "flex_block_mask"} <= set(kernels)
    assert kernels["ours_loop"]["tokens"] == 3 * 6 * 10
    assert kernels["ours_loop"]["max_abs_diff_vs_bool_mask"] < 1e-5  # the grouped calls are the masked attention
    assert kernels["flex_block_mask"]["max_abs_diff_vs_bool_mask"] < 1e-5
    assert 0 < report["parts"]["kernels"]["rho"] < 1

    cog = {c["variant"]: c for c in _cases(report, "cogvideox")}
    assert set(cog) == {"stock", "ours"} and cog["ours"]["tokens"] == 3 * 4 * 4

    train = {c["variant"]: c for c in _cases(report, "train")}
    assert set(train) == {"plain", "ttm"}
    assert train["ttm"]["trained_parameters"] > train["plain"]["trained_parameters"]  # + new layers, patch

    ratios = 0
    for part in ("native", "kernels", "cogvideox", "train"):
        for case in report["parts"][part]["cases"]:
            assert case["time_s"] > 0, case
            for key, value in case["ratios"].items():
                assert value is None or (math.isfinite(value) and value > 0), (case["case"], key, value)
                ratios += value is not None
    for case in (native[(i2v, "strength 1")], cog["ours"], train["ttm"], kernels["ours_loop"]):
        assert case["ratios"]["time" if "time" in case["ratios"] else "time_vs_dense"] > 0
    assert ratios >= 12 and report["non_finite_ratios"] == []


def test_real_size_refuses_a_machine_without_a_gpu() -> None:
    """Before anything is built: the real-size models do not fit a CPU machine's memory."""
    with pytest.raises(TTMInputError) as raised:
        check_size("real", cuda=False)
    assert raised.value.input_name == "--size" and "--size tiny" in raised.value.fix
    check_size("real", cuda=True)
    check_size("tiny", cuda=False)
