"""Part ``kernels`` of ``python -m benchmarks gpu``: masked self-attention kernels at the real token count.

832x480x81 on Wan 2.1 is 21 x 30 x 52 = 32,760 tokens; 40 heads x 128 channels (the 14B model),
batch 2 (the CFG rows), bf16 on CUDA. Two objects as vertical bands covering 30 % and 15 % of every
frame (``benchmarks.attention.case_ids``). Variants, each timed after one untimed call:

* ``dense``            unmasked SDPA (what the unpatched model pays);
* ``dense_bool_mask``  SDPA with the dense N x N boolean mask (the mask built once, not timed);
* ``ours_loop``        our grouped calls, one SDPA per object group (what the native patch runs,
                       through ComfyUI's attention function);
* ``ours_varlen``      our groups packed into PyTorch's varlen kernel (``torch.nn.attention.varlen``,
                       CUDA) - the library's ``auto`` backend on CUDA;
* ``flex_block_mask``  FlexAttention with a "same group" block mask (compiled on CUDA; its compile
                       is timed apart);
* ``flash_attn_varlen`` flash-attn's ``flash_attn_varlen_func`` on the same packed groups
                       (cu_seqlens from the groups), when flash-attn is installed;
* ``ours_loop_sage``   our grouped calls through SageAttention, when installed.

Fused variants are called directly (not through ``partitioned_attention``), so an unavailable
kernel is reported as skipped instead of silently falling back to the loop. limit_eff = rho /
(time / dense time), rho = sum n_k^2 / N^2 (1.0 = the time saved is all the work masking removes).
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.attention import AttentionCase, case_ids
from benchmarks.gpu import Measure, ratio

LOG = logging.getLogger(__name__)

REAL_CASE = AttentionCase((21, 30, 52), (0.30, 0.15), heads=40, head_dim=128, batch=2)
TINY_CASE = AttentionCase((3, 6, 10), (0.30, 0.15), heads=2, head_dim=64, batch=2)


def _variants(ids: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Callable], list[str]]:
    from ttm_core.stage2.attention import kernels
    from ttm_core.stage2.attention.plan import self_groups

    plan = self_groups(ids).to(device)
    mask = (ids[:, None] == ids[None, :]).to(device)
    skipped: list[str] = []
    variants: dict[str, Callable] = {
        "dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "dense_bool_mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "ours_loop": lambda q, k, v: kernels.grouped_self_attention(q, k, v, plan, backend="loop"),
    }
    half = dtype in (torch.float16, torch.bfloat16)
    varlen = kernels._varlen_fn()
    if device.type == "cuda" and half and varlen is not None:
        variants["ours_varlen"] = lambda q, k, v: kernels._varlen_attention(q, k, v, plan, varlen)
    else:
        skipped.append("ours_varlen: PyTorch's varlen kernel (torch.nn.attention.varlen) needs CUDA, fp16/bf16 and a "
                       "PyTorch that has it")
    variants["flex_block_mask"] = lambda q, k, v: kernels._flex_attention(q, k, v, plan)
    if importlib.util.find_spec("flash_attn") is not None and device.type == "cuda" and half:
        from flash_attn import flash_attn_varlen_func

        variants["flash_attn_varlen"] = lambda q, k, v: kernels._varlen_attention(q, k, v, plan,
                                                                                  flash_attn_varlen_func)
    else:
        skipped.append("flash_attn_varlen: flash-attn not installed (or no CUDA / half precision)")
    if importlib.util.find_spec("sageattention") is not None and device.type == "cuda" and half:
        from sageattention import sageattn

        variants["ours_loop_sage"] = lambda q, k, v: kernels.grouped_self_attention(
            q, k, v, plan, attention_fn=lambda a, b, c: sageattn(a, b, c, tensor_layout="HND"), backend="loop")
    else:
        skipped.append("ours_loop_sage: SageAttention not installed (or no CUDA / half precision)")
    return variants, skipped


def run(size: str, extended: bool = False) -> dict[str, Any]:
    real = size == "real"
    case = REAL_CASE if real else TINY_CASE
    device = torch.device("cuda" if real and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ids = case_ids(case)
    counts = torch.bincount(ids).double()
    rho = float((counts ** 2).sum() / case.tokens ** 2)
    gen = torch.Generator(device).manual_seed(0)
    shape = (case.batch, case.heads, case.tokens, case.head_dim)
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3))
    variants, skipped = _variants(ids, device, dtype)
    first_call: dict[str, float] = {}
    reference = None
    differences: dict[str, float] = {}
    for name in list(variants):
        try:
            with Measure() as measure:
                out = variants[name](q, k, v)
        except (RuntimeError, NotImplementedError, ImportError, TypeError) as error:  # a kernel this build lacks
            skipped.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")
            del variants[name]
            continue
        first_call[name] = measure.seconds  # includes FlexAttention's compile
        if name == "dense_bool_mask":
            reference = out.float()
        elif reference is not None and name != "dense":
            differences[name] = float((out.float() - reference).abs().max())
        del out
    rounds = 3 if real else 2
    times: dict[str, list[float]] = {n: [] for n in variants}
    peaks: dict[str, list[float]] = {n: [] for n in variants}
    rises: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with Measure() as measure:
                out = variants[name](q, k, v)
            del out
            times[name].append(measure.seconds)
            peaks[name].append(measure.peak_mib)
            rises[name].append(measure.rise_mib)
    median = {n: statistics.median(times[n]) for n in names}
    cases = []
    for name in names:
        ratios: dict[str, float | None] = {"time_vs_dense": ratio(median[name], median["dense"])}
        if name != "dense":
            time_vs_dense = median[name] / median["dense"]
            ratios["limit_eff"] = round(rho / time_vs_dense, 4) if time_vs_dense > 0 else None
        if "flash_attn_varlen" in median and name != "flash_attn_varlen":
            ratios["speed_vs_flash_varlen"] = ratio(median["flash_attn_varlen"], median[name])
        cases.append({"case": f"{case.label} x{case.heads}h{case.head_dim} b{case.batch} {name}", "variant": name,
                      "tokens": case.tokens, "time_s": round(median[name], 6),
                      "first_call_s": round(first_call[name], 4),
                      "peak_mib": round(statistics.median(peaks[name]), 1),
                      "activation_mib": round(statistics.median(rises[name]), 1),
                      "max_abs_diff_vs_bool_mask": differences.get(name), "ratios": ratios})
    return {"what": __doc__.split("\n\n")[0], "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "rho": round(rho, 4), "group_sizes": counts.long().tolist(), "rounds": rounds, "cases": cases,
            "skipped": skipped}
