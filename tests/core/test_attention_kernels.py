"""Grouping plans and kernels: the grouped paths equal the naive boolean-mask reference (fp32, <= 1e-5)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from attention_cases import one_thread  # noqa: F401 - autouse fixture
from ttm_core.stage2.attention.kernels import (
    grouped_self_attention,
    masked_cross_attention,
    masked_cross_attention_explicit,
    naive_masked_attention,
    partitioned_attention,
)
from ttm_core.stage2.attention.plan import (
    LocalPromptLayout,
    Partition,
    cross_partition,
    joint_partition,
    partition_by_class,
    self_groups,
)

TOL = 1e-5


def _qkv(batch: int, heads: int, nq: int, nk: int, dim: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, nq, dim, generator=gen), torch.randn(batch, heads, nk, dim, generator=gen),
            torch.randn(batch, heads, nk, dim, generator=gen))


def _ids(n: int, groups: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("groups", [1, 2, 5])
def test_grouped_self_attention_equals_the_naive_reference(groups: int) -> None:
    ids = _ids(600, groups)
    q, k, v = _qkv(2, 3, 600, 600)
    plan = self_groups(ids)
    assert sorted(plan.labels) == sorted(torch.unique(ids).tolist())
    ours = grouped_self_attention(q, k, v, plan)
    reference = naive_masked_attention(q, k, v, ids[:, None] == ids[None, :])
    assert (ours - reference).abs().max().item() <= TOL
    # rho = sum(n_k^2) / N^2
    counts = torch.bincount(ids).to(torch.float64)
    assert plan.rho == pytest.approx(float((counts ** 2).sum() / 600 ** 2))


def test_one_group_is_plain_attention_and_group_outputs_ignore_other_groups() -> None:
    q, k, v = _qkv(1, 2, 300, 300)
    one = grouped_self_attention(q, k, v, self_groups(torch.zeros(300, dtype=torch.int64)))
    assert (one - F.scaled_dot_product_attention(q, k, v)).abs().max().item() <= 1e-6
    ids = _ids(300, 3)
    plan = self_groups(ids)
    base = grouped_self_attention(q, k, v, plan)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, ids == 2] += 5.0
    v2[:, :, ids == 2] -= 3.0
    moved = grouped_self_attention(q, k2, v2, plan)
    assert (moved[:, :, ids != 2] - base[:, :, ids != 2]).abs().max().item() == 0.0
    assert (moved[:, :, ids == 2] - base[:, :, ids == 2]).abs().max().item() > 1e-3


def test_presorted_sequences_need_no_gather() -> None:
    ids = _ids(257, 4)
    q, k, v = _qkv(1, 2, 257, 257)
    plan = self_groups(ids)
    expected = grouped_self_attention(q, k, v, plan)[:, :, plan.perm]
    sorted_out = grouped_self_attention(q[:, :, plan.perm], k[:, :, plan.perm], v[:, :, plan.perm], plan.presorted())
    assert (sorted_out - expected).abs().max().item() <= 1e-6


def test_attention_callable_is_called_once_per_group_without_masks() -> None:
    ids = _ids(200, 3)
    q, k, v = _qkv(1, 2, 200, 200)
    calls = []

    def spy(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
        calls.append((qp.shape[2], kp.shape[2]))
        return F.scaled_dot_product_attention(qp, kp, vp)

    out = grouped_self_attention(q, k, v, self_groups(ids), attention_fn=spy, backend="auto")
    counts = torch.bincount(ids).tolist()
    assert sorted(calls) == sorted((n, n) for n in counts)
    assert (out - naive_masked_attention(q, k, v, ids[:, None] == ids[None, :])).abs().max().item() <= TOL


def test_masked_cross_attention_sees_local_prompts_only_inside_boxes() -> None:
    gen = torch.Generator().manual_seed(3)
    in_box = torch.rand(500, 3, generator=gen) > 0.6
    layout = LocalPromptLayout((4, 2, 5))
    q, k, v = _qkv(2, 2, 500, layout.total)
    plan = cross_partition(in_box, layout.owner)
    ours = masked_cross_attention(q, k, v, plan)
    visible = in_box[:, layout.owner - 1]  # [N, M]: key m visible iff the row is in its owner's box
    reference = naive_masked_attention(q, k, v, visible)
    assert (ours - reference).abs().max().item() <= TOL
    outside = ~in_box.any(dim=1)
    assert outside.any() and ours[:, :, outside].abs().max().item() == 0.0  # no local-prompt contribution
    explicit = masked_cross_attention_explicit(q, k, v, visible)
    assert (explicit - reference).abs().max().item() <= TOL
    # A row in boxes 1 and 3 sees both prompts: its output mixes exactly those keys.
    both = (in_box[:, 0] & in_box[:, 2] & ~in_box[:, 1]).nonzero().flatten()[0]
    keys = (layout.owner == 1) | (layout.owner == 3)
    direct = F.scaled_dot_product_attention(q[:, :, both:both + 1], k[:, :, keys], v[:, :, keys])
    assert (ours[:, :, both:both + 1] - direct).abs().max().item() <= 1e-6


def test_joint_form_keeps_shared_keys_everywhere() -> None:
    gen = torch.Generator().manual_seed(4)
    in_box = torch.rand(400, 2, generator=gen) > 0.5
    layout = LocalPromptLayout((3, 3))
    owner = torch.cat([torch.zeros(10, dtype=torch.int64), layout.owner])  # 10 global-prompt keys first
    q, k, v = _qkv(1, 2, 400, owner.numel())
    plan = cross_partition(in_box, owner)
    ours = masked_cross_attention(q, k, v, plan)
    visible = (owner == 0)[None, :] | in_box[:, (owner - 1).clamp(min=0)] & (owner > 0)[None, :]
    assert (ours - naive_masked_attention(q, k, v, visible)).abs().max().item() <= TOL
    outside = ~in_box.any(dim=1)
    stock = F.scaled_dot_product_attention(q[:, :, outside], k[:, :, :10], v[:, :, :10])
    assert (ours[:, :, outside] - stock).abs().max().item() <= 1e-6  # outside every box: the stock cross-attention


@pytest.mark.parametrize("masked_self,masked_cross", [(True, False), (False, True), (True, True)])
def test_joint_partition_matches_its_dense_mask(masked_self: bool, masked_cross: bool) -> None:
    text, video = 7, 240
    ids = _ids(video, 3)
    gen = torch.Generator().manual_seed(5)
    in_box = torch.rand(video, 2, generator=gen) > 0.5
    layout = LocalPromptLayout((2, 3))
    plan = joint_partition(text, ids if masked_self else None, in_box if masked_cross else None, layout.owner)
    nk = text + video + (layout.total if masked_cross else 0)
    q, k, v = _qkv(1, 2, text + video, nk)
    mask = torch.zeros(text + video, nk, dtype=torch.bool)
    mask[:text, :text + video] = True  # text rows: as in the stock model
    mask[text:, :text] = True
    mask[text:, text:text + video] = (ids[:, None] == ids[None, :]) if masked_self else True
    if masked_cross:
        mask[text:, text + video:] = in_box[:, layout.owner - 1]
    assert torch.equal(plan.dense_mask(), mask)
    assert (partitioned_attention(q, k, v, plan) - naive_masked_attention(q, k, v, mask)).abs().max().item() <= TOL


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k):  # mirrors varlen_attn's signature
    out = torch.empty_like(q)
    for i in range(cu_q.numel() - 1):
        a, b, c, d = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        assert b - a <= max_q and d - c <= max_k
        out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1),
                                                  v[c:d].transpose(0, 1)).transpose(0, 1)
    return out


def test_varlen_packing_equals_the_loop() -> None:
    ids = _ids(300, 4)
    q, k, v = _qkv(2, 2, 300, 300)
    plan = self_groups(ids)
    loop = partitioned_attention(q, k, v, plan, backend="loop")
    packed = partitioned_attention(q, k, v, plan, backend="varlen", varlen_fn=_reference_varlen)
    assert (packed - loop).abs().max().item() <= 1e-6
    cross = joint_partition(5, ids[:295], torch.rand(295, 2, generator=torch.Generator().manual_seed(0)) > 0.5,
                            LocalPromptLayout((2, 2)).owner)
    q, k, v = _qkv(2, 2, 300, 304)
    assert (partitioned_attention(q, k, v, cross, backend="varlen", varlen_fn=_reference_varlen)
            - naive_masked_attention(q, k, v, cross.dense_mask())).abs().max().item() <= TOL


def test_flex_backend_equals_the_loop_and_falls_back_for_non_groupings() -> None:
    ids = _ids(256, 3)
    q, k, v = _qkv(1, 2, 256, 256)
    plan = self_groups(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on CPU warns that it is unfused
        flex = partitioned_attention(q, k, v, plan, backend="flex")
    assert (flex - partitioned_attention(q, k, v, plan, backend="loop")).abs().max().item() <= TOL
    in_box = torch.rand(256, 2, generator=torch.Generator().manual_seed(1)) > 0.5
    layout = LocalPromptLayout((2, 2))
    cross = cross_partition(in_box, layout.owner)
    qc, kc, vc = _qkv(1, 2, 256, 4)
    assert (partitioned_attention(qc, kc, vc, cross, backend="flex")
            - masked_cross_attention(qc, kc, vc, cross)).abs().max().item() == 0.0


def test_gradients_flow_through_the_grouped_path() -> None:
    ids = _ids(120, 3)
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 120, 120))
    grouped_self_attention(q, k, v, self_groups(ids)).square().sum().backward()
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    naive_masked_attention(qr, kr, vr, ids[:, None] == ids[None, :]).square().sum().backward()
    for ours, ref in ((q, qr), (k, kr), (v, vr)):
        assert (ours.grad - ref.grad).abs().max().item() <= 1e-4


def test_plans_validate_themselves() -> None:
    with pytest.raises(ValueError, match="two parts"):
        Partition(torch.tensor([0, 1, 1]), (0, 2), (2, 1), (None, None), 3, 3)
    with pytest.raises(ValueError, match="tile"):
        Partition(torch.tensor([0, 1]), (0, 0), (1, 1), (None, None), 2, 2)
    with pytest.raises(ValueError, match="non-empty int64"):
        Partition(torch.tensor([0]), (0,), (1,), (torch.tensor([9]),), 1, 3)
    plan = self_groups(torch.zeros(10_000, dtype=torch.int64))
    with pytest.raises(ValueError, match="dense mask"):
        plan.dense_mask()
    q, k, v = _qkv(1, 1, 9, 9)
    with pytest.raises(ValueError, match="another size"):
        grouped_self_attention(q, k, v, self_groups(torch.zeros(10, dtype=torch.int64)))
    left_out = partition_by_class(torch.tensor([0, -1, 0, 1]), lambda c: torch.tensor([0]), 1)
    assert left_out.perm.tolist() == [0, 2, 3] and left_out.num_q == 4
