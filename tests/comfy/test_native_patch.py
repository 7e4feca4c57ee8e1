"""The native Wan patch on tensors, inside a real ComfyUI (see tests/native_patch_checks.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from common import ROOT
from native_wan import build_cached
from tools.comfy_harness import ComfyInstall

pytestmark = pytest.mark.server
KEYS = ("wan21_i2v", "wan22_ti2v", "clip_l", "wan21_vae")


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    install = ComfyInstall.locate()
    files = build_cached(KEYS, install)
    out = tmp_path_factory.mktemp("native-checks") / "checks.json"
    done = subprocess.run([install.python, str(ROOT / "tests" / "support" / "native_patch_checks.py"), "--comfyui",
                           str(install.comfy_dir), "--pack", str(ROOT), "--json-out", str(out),
                           *(f"{k}={v}" for k, v in files.items())],
                          cwd=install.comfy_dir, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(out.read_text())


def result(checks: dict, name: str) -> dict:
    entry = checks[name]
    assert entry["ok"], entry.get("error")
    return entry["result"]


def test_strength_zero_is_exactly_the_unpatched_model(checks: dict) -> None:
    r = result(checks, "strength_zero_is_stock")
    assert r["zero_vs_stock"] == 0.0
    assert r["masked_vs_stock"] > 1e-4  # and at strength 1 the patch does change the video
    assert r["input_model_untouched"]


@pytest.mark.parametrize("check", ["isolation", "isolation_ti2v"])
def test_masked_blocks_isolate_objects(checks: dict, check: str) -> None:
    r = result(checks, check)
    assert r["object1_tokens"] > 0 and r["object2_tokens"] > 0
    change = {int(k): v for k, v in r["object1_change_per_block"].items()}
    for block in range(r["masked_blocks"]):
        assert change[block] == 0.0, f"object 1's self-attention changed in masked block {block}"
    assert change[r["masked_blocks"]] > 0.0  # the first unmasked block mixes objects again


def test_dual_clock_pins_inside_then_outside(checks: dict) -> None:
    r = result(checks, "dual_clock")
    assert r["inside_cells"] > 0 and r["outside_cells"] > 0
    steps = r["steps"]
    assert len(steps) == 4  # euler: one model call per step, cond and uncond batched
    # Object clock 0.5 and background clock 0.25 of 4 steps: objects pinned at steps 0-1, the
    # background at step 0. A pinned step also pins the prediction (as KSamplerX0Inpaint does), so
    # the next step still starts exactly on the noised reference; after that the latent is free.
    inside = [step["inside"] for step in steps]
    outside = [step["outside"] for step in steps]
    assert max(inside[:3]) < 1e-5 and inside[3] > 1e-3
    assert max(outside[:2]) < 1e-5 and min(outside[2:]) > 1e-3


def test_other_overrides_chain_and_options_stay(checks: dict) -> None:
    r = result(checks, "chaining_and_options")
    assert r["other_pack_calls"] > 0
    assert r["options_same_after_run"] and r["interrupted"] and r["options_same_after_interrupt"]
    assert r["rerun_vs_fresh"] == 0.0


def test_bad_input_and_edge_cases(checks: dict) -> None:
    r = result(checks, "bad_input")
    assert "not a Wan 2.1 / 2.2 model" in r["non_wan"] and "Linear" in r["non_wan"]
    assert r["no_object_vs_stock"] == 0.0
    assert any("no object is in view" in line for line in r["log"])
    assert r["resampled_reference_shape"] == [1, 16, 3, 8, 16]  # 128x64: the trajectory was cropped to 2:1
    assert any("centre crop" in line for line in r["log"])
    # A 17-frame video for the 9-frame trajectory: frames matched by nearest index, said in the log.
    assert r["longer_reference_shape"] == [*r["latent_shape"][:2], 5, *r["latent_shape"][3:]]
    assert any("9-frame trajectory to a" in line and ", 17-frame video" in line for line in r["log"])


# ------------------------------------------------------------------ beside core's own attention nodes
def test_node_order_does_not_matter_beside_model_attention_backend(checks: dict) -> None:
    """Core's Model Attention Backend replaces the stored override without chaining; applied after the patch or
    before it, the masked output is the same (the patch installs itself per forward, outermost)."""
    r = result(checks, "override_installed_after_ours")
    assert r["after_vs_before"] == 0.0
    assert r["after_vs_without"] < 1e-4  # pytorch attention instead of ComfyUI's default CPU attention
    assert r["masked_vs_stock"] > 1e-4  # and masked attention really ran


def test_wrapped_q_k_v_give_the_same_output(checks: dict) -> None:
    r = result(checks, "wrapped_qkv")
    assert r["wrapped_calls"] > 0
    assert r["wrapped_vs_plain"] == 0.0


def test_an_outer_override_with_positional_heads_keeps_masking(checks: dict) -> None:
    r = result(checks, "foreign_override_passes_heads_positionally")
    assert r["passed"] > 0 and r["consumed"] == 0
    assert r["vs_patch_alone"] == 0.0


def test_an_override_that_consumes_self_attention_gives_exactly_stock_with_a_reason(checks: dict) -> None:
    r = result(checks, "foreign_override_consumes_self_attention")
    assert r["consumed"] > 0 and r["passed"] > 0
    assert r["vs_stock"] == 0.0
    assert r["vs_patch_alone"] > 1e-4
    assert any("did not reach the patch" in line for line in r["log"]), r["log"]


def test_extra_tokens_in_the_sequence_give_exactly_stock_with_a_reason(checks: dict) -> None:
    r = result(checks, "length_mismatch")
    assert r["vs_stock"] == 0.0
    assert r["without_extra_masked_vs_stock"] > 1e-4  # the same call without the extra tokens is masked
    assert any("another input adds tokens" in line for line in r["log"]), r["log"]


def test_no_state_is_carried_from_one_sampler_call_to_the_next(checks: dict) -> None:
    r = result(checks, "no_state_between_sampler_calls")
    assert r["second_vs_fresh"] == 0.0 and r["seeds_differ"] > 1e-3


def test_two_sampler_passes_pin_with_the_first_passes_noise(checks: dict) -> None:
    r = result(checks, "two_passes_share_the_first_pass_noise")
    assert r["two_vs_one"] < 1e-4, r
    assert r["unguided_second_pass_vs_one"] > 1e-3  # without the first pass's noise the split is not the same video
    assert any("not the output of a guided pass" in line for line in r["log"]), r["log"]
