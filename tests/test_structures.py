"""Structures: hand-computed masks for every structure, shape rules, views, parsing, verify,
global selection, and hypothesis properties (structure holds, sparsity within one step, nested
masks, idempotence, L2 projection)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sparsegrain.core.errors import ConfigError
from sparsegrain.structures import (
    NM,
    SCORES,
    STRUCTURES,
    Block,
    Combined,
    Structure,
    as_4d,
    describe,
    from_4d,
    global_sparsities,
    group_scores,
    keep_count,
    parse_structure,
    register_score,
    shape_4d,
    sparsity,
    verify,
)

T, F = True, False
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAYER_DOMAIN = ["fine", "vector", "kernel", "filter", "channel", "shape", "block:2x2"]


def w_(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def b_(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.bool)


def mask(spec: str, w: torch.Tensor, s: float, score: str = "l1") -> torch.Tensor:
    out = parse_structure(spec).mask(w, s, score=score)
    assert out.dtype == torch.bool and out.shape == w.shape
    return out


# -- the 4-D view ---------------------------------------------------------------------------------


def test_as_4d_linear_conv1d_conv2d_and_inverse():
    for shape, shape4 in [((3, 4), (3, 4, 1, 1)), ((3, 4, 5), (3, 4, 1, 5)), ((2, 3, 4, 5),) * 2]:
        w = torch.arange(math.prod(shape)).reshape(shape)
        assert shape_4d(shape) == shape4
        assert as_4d(w).shape == shape4
        assert torch.equal(from_4d(as_4d(w), shape), w)
    assert torch.equal(
        as_4d(torch.arange(6).reshape(2, 3))[:, :, 0, 0], torch.arange(6).reshape(2, 3)
    )
    with pytest.raises(ValueError, match="got: 5-D shape"):
        shape_4d((1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="expected: \\(2, 3, 1, 1\\)"):
        from_4d(torch.zeros(2, 3, 1, 2), (2, 3))


# -- hand-computed masks, one or more per structure -----------------------------------------------


def test_fine_linear_and_ties():
    w = w_([[1, -5, 2], [4, 0, -3]])
    assert torch.equal(mask("fine", w, 0.5), b_([[F, T, F], [T, F, T]]))
    # equal scores: the lower flat index is kept
    assert torch.equal(mask("unstructured", torch.ones(2, 2), 0.5), b_([[T, T], [F, F]]))


def test_vector_conv2d_rows_and_ties():
    w = w_([[[[1, 2], [0, -1]]], [[[3, -3], [1, 0]]]])  # row l1: 3, 1 | 6, 1
    assert torch.equal(mask("vector", w, 0.5), b_([[[[T, T], [F, F]]], [[[T, T], [F, F]]]]))
    assert torch.equal(mask("vector", w, 0.7), b_([[[[F, F], [F, F]]], [[[T, T], [F, F]]]]))
    # keep 3: rows 6, 3, then the tie 1 = 1 goes to row (0, 0, 1), the earlier one
    assert torch.equal(mask("vector", w, 0.25), b_([[[[T, T], [T, T]]], [[[T, T], [F, F]]]]))


def test_vector_conv1d():
    w = w_([[[1, 0, 0], [2, 2, 2]], [[0, 0, 5], [1, 1, 0]]])  # rows W[k,c,:]: 1, 6, 5, 2
    expected = b_([[[F, F, F], [T, T, T]], [[T, T, T], [F, F, F]]])
    assert torch.equal(mask("vector", w, 0.5), expected)


def test_kernel_depthwise_l1_vs_l2():
    w = w_([[[[1, 1], [1, 1]]], [[[0, 0], [0, -2.5]]], [[[3, 0], [0, 0]]]])
    # l1: 4, 2.5, 3 -> keep kernels 0 and 2; l2: 2, 2.5, 3 -> keep kernels 2 and 1
    on, off = [[[T, T], [T, T]]], [[[F, F], [F, F]]]
    assert torch.equal(mask("kernel", w, 1 / 3), b_([on, off, on]))
    assert torch.equal(mask("kernel", w, 1 / 3, "l2"), b_([off, on, on]))


def test_filter_linear_l1_tie_and_l2():
    w = w_([[1, 1], [0, 3], [-2, 0]])  # l1: 2, 3, 2 ; l2: 1.41, 3, 2
    assert torch.equal(mask("filter", w, 0.34), b_([[T, T], [T, T], [F, F]]))
    assert torch.equal(mask("filter", w, 0.34, "l2"), b_([[F, F], [T, T], [T, T]]))


def test_channel_conv2d_1x2():
    w = w_([[[[1, 0]], [[0, 0]], [[2, 2]]], [[[1, 1]], [[0, 4]], [[0, 0]]]])  # channels: 3, 4, 4
    assert torch.equal(
        mask("channel", w, 1 / 3),
        b_([[[[F, F]], [[T, T]], [[T, T]]], [[[F, F]], [[T, T]], [[T, T]]]]),
    )
    assert torch.equal(
        mask("admm-channel", w, 2 / 3),
        b_([[[[F, F]], [[T, T]], [[F, F]]], [[[F, F]], [[T, T]], [[F, F]]]]),
    )


def test_shape_conv1d_columns():
    w = w_([[[1, 2], [0, 3]], [[-1, 0], [0, -1]]])  # columns (c, s): 2, 2, 0, 4
    assert torch.equal(mask("column", w, 0.5), b_([[[T, F], [F, T]], [[T, F], [F, T]]]))


def test_window_3x3_half_even_and_ties():
    w = w_([[[[9, 8, 7], [6, 5, 4], [3, 2, 1]], [[-1, 0, 2], [0, 0, 0], [0, 3, 0]]]])
    # round(0.5 * 9) = round(4.5) = 4 (half to even): 4 pruned, 5 kept in every kernel;
    # in kernel 1 the zeros tie, and the earliest ones (positions 1, 3) are kept
    expected = b_([[[[T, T, T], [T, T, F], [F, F, F]], [[T, T, T], [T, F, F], [F, T, F]]]])
    assert torch.equal(mask("window", w, 0.5), expected)


def test_window_non_square_1x3_conv1d():
    w = w_([[[1, -3, 2]], [[0, 0, 0]]])
    # round(1.5) = 2 pruned of 3: keep 1 per kernel
    assert torch.equal(mask("campfire-window", w, 0.5), b_([[[F, T, F]], [[T, F, F]]]))


def test_kernel_quota_conv_and_linear():
    w = w_([[[[1, 1]], [[0, 3]], [[2, 0]]], [[[0, 1]], [[0, 0]], [[-1, 0]]]])
    # filter 0 kernels: 2, 3, 2 -> c1 ; filter 1: 1, 0, 1 -> c0 (tie with c2, earlier wins)
    expected = b_([[[[F, F]], [[T, T]], [[F, F]]], [[[T, T]], [[F, F]], [[F, F]]]])
    assert torch.equal(mask("kernel-quota", w, 0.5), expected)
    # on a Linear weight it is row-balanced fine sparsity
    lin = w_([[1, 4, 2, 3], [5, 0, 0, 1]])
    assert torch.equal(mask("campfire-channel", lin, 0.5), b_([[F, T, F, T], [T, F, F, T]]))


def test_combined_default_split_and_extremes():
    w = w_(
        [
            [[[1, 2], [3, 4]], [[5, 0], [0, 0]]],  # kernels 10, 5
            [[[0, 1], [0, 1]], [[2, 0], [0, 1]]],  # kernels 2, 3
        ]
    )
    off = [[F, F], [F, F]]
    # s = 0.75: s_kq = s_win = 1 - sqrt(0.25) = 0.5 -> 1 of 2 kernels, 2 of 4 elements
    assert Combined().keep_per_domain(w.shape, 0.75) == (1, 2)
    expected = b_([[[[F, F], [T, T]], off], [off, [[T, F], [F, T]]]])
    assert torch.equal(mask("combined", w, 0.75), expected)
    # split 0: all to window, 1 of 4 per kernel
    expected = b_([[[[F, F], [F, T]], [[T, F], [F, F]]], [[[F, T], [F, F]], [[T, F], [F, F]]]])
    assert torch.equal(mask("combined:0", w, 0.75), expected)
    # split 1: all to kernel-quota, kernels kept whole
    on = [[T, T], [T, T]]
    assert torch.equal(mask("campfire-combined:1", w, 0.5), b_([[on, off], [off, on]]))


def test_nm_linear_ramp_and_final():
    w = w_([[1, 2, 3, 4, -4, 0, 0, 1], [0, 0, 0, 0, 2, 2, 2, 2]])
    two = b_([[F, F, T, T, T, F, F, T], [T, T, F, F, T, T, F, F]])
    assert torch.equal(mask("nm:2:4", w, 0.5), two)
    assert torch.equal(mask("nm:2:4", w, 0.9), two)  # never below 2:4
    three = b_([[F, T, T, T, T, T, F, T], [T, T, T, F, T, T, T, F]])
    assert torch.equal(mask("nm:2:4", w, 0.25), three)  # 3:4 on the way
    assert NM(2, 4).fixed_sparsity == 0.5 and parse_structure("window").fixed_sparsity is None


def test_nm_conv2d_and_conv1d():
    w = w_([[[[1, -2]], [[0.5, 2]]]])  # C*R*S = 4: one domain per filter
    assert torch.equal(mask("nm:1:4", w, 0.75), b_([[[[F, T]], [[F, F]]]]))
    w1 = w_([[[3, 1], [2, 0]]])  # Conv1d (1, 2, 2): elements 3, 1 | 2, 0 along c, s
    assert torch.equal(mask("nm:1:2", w1, 0.5), b_([[[T, F], [T, F]]]))


def test_block_linear_and_conv():
    w = w_([[1, 1, 0, 0], [1, 1, 0, 2], [0, 0, 3, 0], [0, 0, 0, 0]])  # tiles 4, 2, 0, 3
    expected = b_([[T, T, F, F], [T, T, F, F], [F, F, T, T], [F, F, T, T]])
    assert torch.equal(mask("block:2x2", w, 0.5), expected)
    conv = w_([[[[1, 0], [0, 2]]], [[[1, 0], [3, 0]]]])  # 2x1 tiles = GEMM columns: 2, 0, 3, 2
    assert torch.equal(mask("block:2x1", conv, 0.5), b_([[[[T, F], [T, F]]], [[[T, F], [T, F]]]]))


def test_mask_keeps_one_group_and_rejects_bad_sparsity():
    w = w_([[1, 2], [3, 4]])
    assert torch.equal(mask("filter", w, 0.99), b_([[F, F], [T, T]]))
    assert torch.equal(mask("fine", w, 0.0), b_([[T, T], [T, T]]))
    for bad in (1.0, -0.1, float("nan"), 2):
        with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
            parse_structure("fine").mask(w, bad)
    with pytest.raises(ValueError, match="NaN"):
        parse_structure("fine").mask(w_([[1, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="window needs a kernel larger than 1x1"):
        parse_structure("window").mask(w, 0.5)


def test_keep_count_rule():
    assert [keep_count(9, s) for s in (0.0, 0.5, 0.55, 0.95, 0.99)] == [9, 5, 4, 1, 1]
    assert [keep_count(4, s, 2) for s in (0.0, 0.25, 0.5, 0.9)] == [4, 3, 2, 2]


def test_half_precision_same_mask():
    w = w_([[1, -5, 2, 0.5], [4, 0, -3, 0.25]])
    for spec in ("fine", "kernel-quota", "nm:1:2"):
        assert torch.equal(mask(spec, w.half(), 0.5), mask(spec, w, 0.5))


# -- shape rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, shape, reason",
    [
        ("window", (4, 3), "window needs a kernel larger than 1x1, got 1x1"),
        ("window", (4, 3, 1, 1), "window needs a kernel larger than 1x1, got 1x1"),
        ("nm:2:4", (8, 3, 3, 3), "nm:2:4 needs C*R*S divisible by 4, got 27"),
        (
            "block:4x4",
            (10, 3, 3, 3),
            "block:4x4 needs K divisible by 4 and C*R*S divisible by 4, got (10, 27)",
        ),
        ("kernel-quota", (8, 1, 3, 3), "kernel-quota needs C > 1 (kernels per filter), got C=1"),
        ("combined", (8, 1, 3, 3), "combined needs C > 1 (kernels per filter), got C=1"),
        ("combined", (8, 4, 1, 1), "combined needs a kernel larger than 1x1, got 1x1"),
        ("channel", (8, 1, 3, 3), "channel needs C > 1 (input channels per group), got C=1"),
        ("filter", (1, 4), "filter needs K > 1 (more than one filter), got K=1"),
        ("block:2x2", (2, 2), "block:2x2 needs more than one block, got one block of (2, 2)"),
        ("fine", (1, 2, 3, 4, 5), "fine needs a 2-D, 3-D or 4-D weight, got shape (1, 2, 3, 4, 5)"),
    ],
)
def test_fits_refusals(spec, shape, reason):
    assert parse_structure(spec).fits(shape) == reason


@pytest.mark.parametrize(
    "spec, shape",
    [
        ("window", (4, 2, 3)),  # Conv1d 1x3
        ("window", (4, 1, 1, 3)),  # depthwise, non-square
        ("kernel", (4, 1, 3, 3)),
        ("kernel-quota", (4, 3)),
        ("nm:2:4", (8, 4, 1, 1)),
        ("block:4x4", (8, 2, 2, 2)),
        ("vector", (4, 3)),
    ],
)
def test_fits_accepts(spec, shape):
    assert parse_structure(spec).fits(shape) is None


# -- group views ----------------------------------------------------------------------------------

LAYOUTS = {
    "fine": (1, 24, 1),
    "vector": (1, 12, 2),
    "kernel": (1, 6, 4),
    "filter": (1, 2, 12),
    "channel": (1, 3, 8),
    "shape": (1, 12, 2),
    "window": (6, 4, 1),
    "kernel-quota": (2, 3, 4),
    "combined": (6, 4, 1),
    "nm:2:4": (6, 4, 1),
    "nm:3:6": (4, 6, 1),
    "block:2x3": (1, 4, 6),
}


@pytest.mark.parametrize("spec", list(LAYOUTS))
def test_group_view_layout_and_round_trip(spec):
    s = parse_structure(spec)
    w4 = torch.arange(24.0).reshape(2, 3, 2, 2)
    view = s.group_view(w4)
    assert tuple(view.shape) == s.layout((2, 3, 2, 2)) == LAYOUTS[spec]
    assert torch.equal(s.from_group_view(view, (2, 3, 2, 2)), w4)
    d, g, _ = LAYOUTS[spec]
    assert s.num_groups((2, 3, 2, 2)) == d * g
    assert s.quota_step((2, 3, 2, 2)) == (1 / 12 if spec == "combined" else 1 / g)


def test_group_view_contents():
    w4 = torch.arange(24.0).reshape(2, 3, 2, 2)
    gemm = w4.reshape(2, 12)
    ch = parse_structure("channel").group_view(w4)
    assert all(torch.equal(ch[0, c], w4[:, c].flatten()) for c in range(3))
    col = parse_structure("shape").group_view(w4)
    assert torch.equal(col[0, 5], w4[:, 1, 0, 1])
    blk = Block(2, 3).group_view(w4)
    assert torch.equal(blk[0, 3], gemm[0:2, 9:12].flatten())
    nm = NM(2, 4).group_view(w4)
    assert torch.equal(nm[4, :, 0], gemm[1, 4:8])
    kq = parse_structure("kernel-quota").group_view(w4)
    assert torch.equal(kq[1, 2], w4[1, 2].flatten())


def test_expand_broadcasts_group_mask_into_fresh_memory():
    s = parse_structure("channel")
    mask4 = s.expand(b_([[F, T, F]]), (2, 3, 1, 2))
    assert torch.equal(mask4, b_([[[[F, F]], [[T, T]], [[F, F]]]] * 2))
    m = mask("kernel", torch.ones(2, 1, 3, 3), 0.5)
    m[0, 0, 0, 0] = False  # must not write through a broadcast to the whole kernel
    assert int(m.sum()) == 8 and m.is_contiguous()
    with pytest.raises(ValueError, match="expected: \\(1, 3, 2\\)"):
        s.from_group_view(torch.zeros(1, 2, 3), (2, 3, 1, 1))


# -- names ----------------------------------------------------------------------------------------


def test_registry_names_aliases_help():
    assert STRUCTURES.names() == [
        "fine", "vector", "kernel", "filter", "channel", "shape",
        "window", "kernel-quota", "combined", "nm", "block", "neuron", "head",
    ]  # fmt: skip
    aliases = {
        "unstructured": "fine", "irregular": "fine", "admm-channel": "channel",
        "input-channel": "channel", "column": "shape", "campfire-window": "window",
        "kernel_quota": "kernel-quota", "campfire-channel": "kernel-quota",
        "campfire-combined": "combined", "mlp-neuron": "neuron", "attention-head": "head",
    }  # fmt: skip
    for alias, name in aliases.items():
        assert parse_structure(alias).name == name
        assert parse_structure(alias) == parse_structure(name)
    assert all(e.help for e in STRUCTURES.entries())


@pytest.mark.parametrize(
    "text, spec",
    [
        ("kernel", "kernel"),
        ("  Kernel-Quota ", "kernel-quota"),
        ("nm:2:4", "nm:2:4"),
        ("NM:1:1", "nm:1:1"),
        ("block:4x4", "block:4x4"),
        ("block:1X8", "block:1x8"),
        ("combined", "combined"),
        ("combined:0.5", "combined"),
        ("combined:0.3", "combined:0.3"),
        ("campfire-combined:1", "combined:1.0"),
    ],
)
def test_parse_spec_round_trip(text, spec):
    s = parse_structure(text)
    assert s.spec == spec
    assert parse_structure(s.spec) == s
    assert parse_structure(s) is s


@pytest.mark.parametrize(
    "text, message",
    [
        ("kernl", "unknown structure 'kernl' (did you mean 'kernel'?); choose from: admm-channel"),
        ("nm:4:2", "structure 'nm:4:2': expected nm:N:M with integers 1 <= N <= M (e.g. nm:2:4)"),
        ("nm:2", "structure 'nm:2': expected nm:N:M with integers 1 <= N <= M"),
        ("nm:0:4", "structure 'nm:0:4': expected nm:N:M"),
        ("block:0x4", "structure 'block:0x4': expected block:B1xB2 with integers B1, B2 >= 1"),
        ("block:4", "structure 'block:4': expected block:B1xB2"),
        ("combined:1.5", "structure 'combined:1.5': expected combined or combined:SPLIT"),
        ("kernel:3", "structure 'kernel' takes no parameters, got 'kernel:3'"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ConfigError) as err:
        parse_structure(text)
    assert message in str(err.value)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="expected nm:N:M"):
        NM(4, 2)
    with pytest.raises(ConfigError, match="expected block:B1xB2"):
        Block(0, 4)
    with pytest.raises(ConfigError, match="expected combined"):
        Combined(-0.1)
    with pytest.raises(ConfigError, match="must be a string"):
        parse_structure(4)


def test_describe():
    assert describe("campfire-window").splitlines() == [
        "window (aliases: campfire-window)",
        "  group: one element W[k,c,r,s]",
        "  domain: each kernel W[k,c,:,:] (the same number n of R*S kept in every kernel)",
    ]
    assert "final sparsity 1 - 2/4 = 0.5" in describe("nm:2:4")
    assert "our reconstruction" in describe("combined:0.3")


# -- scores ---------------------------------------------------------------------------------------


def _max_abs(grouped: torch.Tensor) -> torch.Tensor:
    """largest |w| in the group"""
    return grouped.abs().amax(-1)


register_score("test-max", _max_abs)


def test_scores_l1_l2_and_custom():
    w = w_([[3, -4], [1, 1], [0, -5]])
    assert torch.equal(group_scores(w, "filter", "l1"), w_([[7, 2, 5]]))
    assert torch.equal(group_scores(w, "filter", "l2"), w_([[25, 2, 25]]).sqrt())
    assert torch.equal(group_scores(w, "filter", "test-max"), w_([[4, 1, 5]]))
    assert torch.equal(mask("filter", w, 0.5, "test-max"), b_([[F, F], [F, F], [T, T]]))
    assert {"l1", "l2", "test-max"} <= set(SCORES.names())
    with pytest.raises(ConfigError, match="unknown score 'l3'"):
        group_scores(w, "filter", "l3")
    with pytest.raises(ValueError, match="expected: \\(1, 3\\)"):
        group_scores(w, "filter", lambda g: g.sum(-1).sum(-1))


# -- verify and sparsity --------------------------------------------------------------------------


def test_verify_window_counts_and_brief_example():
    w = torch.arange(1.0, 73.0).reshape(4, 2, 3, 3)
    m = mask("window", w, 0.55)  # round(4.95) = 5 pruned: keep 4 of 9
    assert verify(m, "window", is_mask=True) == []
    assert verify(m, "window", is_mask=True, keep=4) == []
    m[3, 1, 0, 0] = True
    assert verify(m, "window", is_mask=True) == ["window: kernel (3, 1) keeps 5 of 9, expected 4"]
    assert verify(m * w, "window", is_mask=False, keep=4) == [
        "window: kernel (3, 1) has 5 non-zero of 9, at most 4 allowed"
    ]
    assert verify(m * w, "window", is_mask=False) == []  # no quota given: any pattern is covered


def test_verify_partial_groups_and_layer_keep():
    m = mask("kernel", torch.arange(1.0, 37.0).reshape(2, 2, 3, 3), 0.5)
    assert verify(m, "kernel", is_mask=True, keep=2) == []
    m[0, 0, 1, 1] = True
    assert verify(m, "kernel", is_mask=True) == [
        "kernel: kernel (0, 0) is partly kept (1 of 9 elements)"
    ]
    assert verify(m, "kernel", is_mask=True, keep=2) == [
        "kernel: kernel (0, 0) is partly kept (1 of 9 elements)",
        "kernel: layer keeps 3 of 4, expected 2",
    ]
    assert verify(m, "kernel", is_mask=False) == []  # a weight's zeros: partial groups are fine


def test_verify_nm_weight_and_masks():
    w = w_([[1, 2, 3, 4, 0, 0, 1, 1], [1, 0, 0, 1, 1, 1, 0, 1]])
    assert verify(w, "nm:2:4", is_mask=False) == [
        "nm:2:4: row 0, columns 0..3 has 4 non-zero of 4, at most 2 allowed",
        "nm:2:4: row 1, columns 4..7 has 3 non-zero of 4, at most 2 allowed",
    ]
    three = mask("nm:2:4", w, 0.25)  # 3:4 during a ramp is a valid nm:2:4 mask
    assert verify(three, "nm:2:4", is_mask=True) == []
    assert verify(three, "nm:2:4", is_mask=True, keep=2)[0] == (
        "nm:2:4: row 0, columns 0..3 keeps 3 of 4, expected 2"
    )


def test_verify_kernel_quota_and_combined():
    w = w_([[[[1]], [[2]], [[0]]], [[[0]], [[0]], [[3]]]])
    assert verify(w, "kernel-quota", is_mask=False, keep=1) == [
        "kernel-quota: filter 0 has 2 non-zero of 3, at most 1 allowed"
    ]
    # counts 2 and 1 tie for most common: the smaller is expected
    assert verify(w != 0, "kernel-quota", is_mask=True) == [
        "kernel-quota: filter 0 keeps 2 of 3, expected 1"
    ]
    c = torch.ones(2, 2, 2, 2, dtype=torch.bool)
    c[0, 1] = False  # filter 0 keeps 1 kernel, filter 1 keeps 2
    c[1, 0, 0, 0] = False  # kernel (1, 0) keeps 3 of 4, the others 4
    assert verify(c, "combined", is_mask=True, keep=(1, 4)) == [
        "combined: filter 1 keeps 2 of 2, expected 1",
        "combined: kernel (1, 0) keeps 3 of 4, expected 4",
    ]
    assert verify(c, "combined", is_mask=False, keep=(2, 3)) == [
        "combined: kernel (0, 0) has 4 non-zero of 4, at most 3 allowed",
        "combined: kernel (1, 1) has 4 non-zero of 4, at most 3 allowed",
    ]
    with pytest.raises(ValueError, match="keep: expected \\(m, n\\) for combined"):
        verify(c, "combined", is_mask=True, keep=2)


def test_verify_misc():
    assert verify(torch.ones(4, 3, dtype=torch.bool), "window", is_mask=True) == [
        "window needs a kernel larger than 1x1, got 1x1"
    ]
    assert verify(w_([[1, 0.5], [0, 1]]), "fine", is_mask=True) == [
        "fine: mask holds 1 entries that are neither 0 nor 1"
    ]
    many = torch.zeros(1, 50, 2, 2, dtype=torch.bool)
    many[0, :, 0, 0] = True
    out = verify(many, "kernel", is_mask=True, max_report=3)
    assert len(out) == 4 and out[-1] == "... and 47 more violations"


def test_sparsity():
    assert sparsity(b_([[T, F], [F, F]])) == 0.75
    assert sparsity(w_([1, 0, 2, 0])) == 0.5
    assert sparsity(torch.zeros(0)) == 0.0


# -- global selection -----------------------------------------------------------------------------


def test_global_hand_example_and_floor():
    a, b = w_([[4, 1], [3, 5]]), w_([[0.5, 0.2]])
    fine = parse_structure("fine")
    # budget 3 of 6 elements: 5, 4, 3 all in layer a; b would be empty -> kept one (cap 0.5)
    assert global_sparsities({"a": (a, fine), "b": (b, fine)}, 0.5) == {"a": 0.25, "b": 0.5}
    assert global_sparsities({"a": (a, fine), "b": (b, fine)}, 0.0) == {"a": 0.0, "b": 0.0}
    assert global_sparsities({}, 0.5) == {}


def test_global_normalises_by_group_size():
    k = w_([[[[2, 2], [2, 2]]], [[[1, 1], [1, 1]]]])  # kernel sums 8, 4 -> means 2, 1
    f = w_([[3, 1.5]])
    out = global_sparsities({"k": (k, "kernel"), "f": (f, "fine")}, 0.5)  # budget 5 of 10
    # ranked: f[0] 3, k0 2 (4 elements), f[1] 1.5, k1 1: kept f[0] (mid 0.5), k0 (mid 3)
    assert out == {"k": 0.5, "f": 0.5}
    out = global_sparsities({"k": (k, "kernel"), "f": (f, "fine")}, 0.5, score="l2")
    assert out == {"k": 0.5, "f": 0.5}  # RMS 2, 1: the same ranking


def test_global_refuses_layer_that_does_not_fit():
    with pytest.raises(ValueError, match="layer 'fc' \\(4, 3\\): window needs a kernel"):
        global_sparsities({"fc": (torch.ones(4, 3), "window")}, 0.5)


# -- properties -----------------------------------------------------------------------------------


@st.composite
def structures(draw) -> Structure:
    kind = draw(st.sampled_from([*LAYOUTS, "nm", "block", "combined"]))
    if kind == "nm":
        m = draw(st.integers(1, 5))
        return NM(draw(st.integers(1, m)), m)
    if kind == "block":
        return Block(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "combined":
        return Combined(draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0])))
    return parse_structure(kind)


@st.composite
def weights(draw, structure, max_dim=4):
    ndim = draw(st.sampled_from([2, 3, 4]))
    k, c = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    r = draw(st.integers(1, 3)) if ndim == 4 else 1
    s = draw(st.integers(1, 3)) if ndim >= 3 else 1
    if isinstance(structure, NM):
        c *= structure.m
    if isinstance(structure, Block):
        k, c = k * structure.b1, c * structure.b2
    shape = {2: (k, c), 3: (k, c, s), 4: (k, c, r, s)}[ndim]
    assume(structure.fits(shape) is None)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):  # small integers: many ties, exact sums
        return torch.randint(-3, 4, shape, generator=gen).double()
    return torch.randn(shape, generator=gen, dtype=torch.float64)


@st.composite
def cases(draw):
    structure = draw(structures())
    return structure, draw(weights(structure))


targets = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


@PROPS
@given(cases(), targets, st.sampled_from(["l1", "l2"]))
def test_prop_mask_is_structured_and_on_target(case, s, score):
    structure, w = case
    m = structure.mask(w, s, score=score)
    keep = structure.keep_per_domain(w.shape, s)
    assert verify(m, structure, is_mask=True) == []
    assert verify(m, structure, is_mask=True, keep=keep) == []
    assert verify(w * m, structure, is_mask=False, keep=keep) == []
    achieved = sparsity(m)
    assert achieved == structure.achieved_sparsity(w.shape, s)
    goal = min(s, structure.fixed_sparsity if structure.fixed_sparsity is not None else 1.0)
    assert abs(achieved - goal) <= structure.tolerance(w.shape)
    assert achieved <= structure.max_sparsity(w.shape)
    assert torch.equal(structure.mask(w, s, score=score), m)  # deterministic


@PROPS
@given(cases(), targets, targets)
def test_prop_nested_and_monotone(case, s1, s2):
    structure, w = case
    lo, hi = sorted((s1, s2))
    m_lo, m_hi = structure.mask(w, lo), structure.mask(w, hi)
    assert not (m_hi & ~m_lo).any()  # everything kept at the higher target is kept at the lower
    assert int(m_hi.sum()) <= int(m_lo.sum())


@PROPS
@given(cases(), targets, st.sampled_from(["l1", "l2"]))
def test_prop_idempotent_and_layout_free(case, s, score):
    structure, w = case
    m = structure.mask(w, s, score=score)
    assert torch.equal(structure.mask(w * m, s, score=score), m)
    if w.dim() == 4:
        cl = w.contiguous(memory_format=torch.channels_last)
        assert torch.equal(structure.mask(cl, s, score=score), m)


@PROPS
@given(cases())
def test_prop_group_view_round_trip(case):
    structure, w = case
    w4 = as_4d(w)
    view = structure.group_view(w4)
    assert tuple(view.shape) == structure.layout(tuple(w4.shape))
    assert torch.equal(structure.from_group_view(view, w4.shape), w4)
    d, g, _ = view.shape
    gm = torch.rand(d, g, generator=torch.Generator().manual_seed(0)) < 0.5
    mask4 = structure.expand(gm, w4.shape)
    assert torch.equal(structure.group_view(mask4).all(-1), gm)
    assert torch.equal(structure.group_view(mask4).any(-1), gm)


def _projection_cases(names):
    @st.composite
    def draw_case(draw):
        structure = parse_structure(draw(st.sampled_from(names)))
        w = draw(weights(structure, max_dim=2))
        assume(structure.layout(shape_4d(w.shape))[1] <= 8)
        return structure, w.round()

    return draw_case()


@PROPS
@given(
    _projection_cases([*LAYOUTS][:6] + ["block:2x2", "window", "kernel-quota", "nm:2:4"]), targets
)
def test_prop_l2_projection_is_closest(case, s):
    """w * mask is the closest tensor (Frobenius) among masks keeping as many groups per domain."""
    structure, w = case
    view = structure.group_view(as_4d(w))
    energy = view.pow(2).sum(-1)  # (D, G) squared group norms, exact for integer weights
    kept = structure.group_view(as_4d(structure.mask(w, s, score="l2"))).all(-1)
    k = int(kept[0].sum())
    for d in range(view.shape[0]):
        ours = float(energy[d][~kept[d]].sum())
        best = min(
            float(energy[d].sum() - energy[d][list(idx)].sum())
            for idx in itertools.combinations(range(view.shape[1]), k)
        )
        assert ours == best


@st.composite
def layer_sets(draw, names):
    layers = {}
    for i in range(draw(st.integers(1, 3))):
        structure = parse_structure(draw(st.sampled_from(names)))
        layers[f"l{i}"] = (draw(weights(structure)), structure)
    return layers


@PROPS
@given(layer_sets(LAYER_DOMAIN), targets, st.sampled_from(["l1", "l2"]))
def test_prop_global_is_one_threshold_for_layer_domain(layers, s, score):
    out = global_sparsities(layers, s, score=score)
    exponent = {"l1": 1.0, "l2": 0.5}[score]
    ranked = []  # (normalised score, layer, group, size): a brute-force global ranking
    for li, (w, structure) in enumerate(layers.values()):
        e = structure.layout(shape_4d(w.shape))[2]
        for g, v in enumerate(group_scores(w, structure, score).reshape(-1).tolist()):
            ranked.append((-v / e**exponent, li, g, e))
    ranked.sort(key=lambda t: t[:3])
    total = sum(w.numel() for w, _ in layers.values())
    budget, running, chosen = (1 - s) * total, 0, set()
    for _, li, g, e in ranked:
        running += e
        if running - e / 2 < budget:
            chosen.add((li, g))
    for li, (name, (w, structure)) in enumerate(layers.items()):
        got = structure.group_view(as_4d(structure.mask(w, out[name], score=score))).all(-1)
        want = torch.tensor([(li, g) in chosen for g in range(got.numel())]).reshape(got.shape)
        if want.any():
            assert torch.equal(got, want)
        else:  # the one-group floor: the layer keeps its best group
            assert int(got.sum()) == 1


@PROPS
@given(layer_sets(LAYER_DOMAIN + ["window", "kernel-quota", "combined"]), targets)
def test_prop_global_total_within_tolerance(layers, s):
    out = global_sparsities(layers, s)
    total = sum(w.numel() for w, _ in layers.values())
    kept = sum(int(st_.mask(w, out[n]).sum()) for n, (w, st_) in layers.items())
    biggest = max(st_.layout(shape_4d(w.shape))[2] for w, st_ in layers.values())
    slack = sum(2 * st_.tolerance(w.shape) * w.numel() for w, st_ in layers.values())
    assert abs(kept - (1 - s) * total) <= slack + biggest / 2


def _sorted_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The definition select_top must match: the first ``keep`` of a stable descending sort."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return torch.zeros(scores.shape, dtype=torch.bool).scatter_(1, order[:, :keep], True)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 4),
    values=st.lists(st.sampled_from([-1.0, -0.0, 0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=24),
    data=st.data(),
)
def test_select_top_is_the_stable_sort_with_ties(rows, values, data):
    from sparsegrain.structures import select_top

    scores = torch.tensor(values).repeat(rows, 1)
    scores[1:] = scores[1:].roll(1, dims=1)  # other rows: other tie positions
    keep = data.draw(st.integers(0, len(values)))
    assert torch.equal(select_top(scores, keep), _sorted_top(scores, keep))


@pytest.mark.parametrize("kind", ["distinct", "few values", "all equal"])
def test_select_top_large_domain_by_selection(kind):
    from sparsegrain.structures import select_top

    n = 200_003  # above the direct-kthvalue size: the sample-then-band selection path
    g = torch.Generator().manual_seed(1)
    scores = {
        "distinct": torch.rand(1, n, generator=g),
        "few values": torch.randint(0, 7, (1, n), generator=g).float(),
        "all equal": torch.ones(1, n),
    }[kind]
    for keep in (1, 2, n // 10, n // 2, n - 1, n):
        mask = select_top(scores, keep)
        assert int(mask.sum()) == keep
        assert torch.equal(mask, _sorted_top(scores, keep))


def _sorted_global(layers, s):
    """The definition of global_sparsities for fine layers: rank every weight by |w| (stable,
    earlier layer first), keep the k-th iff k - 1/2 < budget."""
    value = torch.cat([w.abs().reshape(-1).double() for w in layers.values()])
    owner = torch.cat([torch.full((w.numel(),), i) for i, w in enumerate(layers.values())])
    order = torch.sort(value, descending=True, stable=True).indices
    budget = (1.0 - s) * len(value)
    kept = (torch.arange(1, len(value) + 1, dtype=torch.float64) - 0.5) < budget
    counts = torch.bincount(owner[order][kept], minlength=len(layers))
    return {n: (w.numel() - int(c)) / w.numel() for (n, w), c in zip(layers.items(), counts)}


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 40), min_size=1, max_size=4),
    s=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.99]),
    seed=st.integers(0, 2**16),
)
def test_global_fine_by_selection_equals_the_sorted_ranking(sizes, s, seed):
    g = torch.Generator().manual_seed(seed)
    layers = {f"l{i}": torch.randint(-2, 3, (n,), generator=g).float() for i, n in enumerate(sizes)}
    layers = {n: w.reshape(1, -1) for n, w in layers.items()}  # Linear weights, many ties
    out = global_sparsities({n: (w, "fine") for n, w in layers.items()}, s)
    ref = _sorted_global(layers, s)
    for n, w in layers.items():  # a layer keeps at least one weight
        assert out[n] == min(ref[n], (w.numel() - 1) / w.numel())


@settings(max_examples=60, deadline=None)
@given(
    s=st.sampled_from([0.0, 0.1, 0.5, 0.7, 0.9, 0.99]),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
    score=st.sampled_from(["l1", "l2"]),
)
def test_global_mixed_sizes_by_band_equals_the_full_sort(s, seed, ties, score):
    """Groups of 9, 1 and 4 elements: the band path ranks exactly as sorting every group."""
    from sparsegrain.structures import select

    g = torch.Generator().manual_seed(seed)
    shapes = {"k3": ((32, 16, 3, 3), "kernel"), "k1": ((64, 32, 1, 1), "kernel")}
    shapes["fc"] = ((16, 64), "block:1x4")
    layers = {}
    for name, (shape, structure) in shapes.items():
        w = torch.randint(-3, 4, shape, generator=g).float() if ties else torch.randn(shape)
        layers[name] = (w, structure)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(select, "BAND_SAMPLE", 1 << 30)
        full = global_sparsities(layers, s, score=score)
        taken = []
        real = select._kept_in_band
        mp.setattr(select, "BAND_SAMPLE", 256)  # 512 + 2048 + 256 groups > 4 * 256
        mp.setattr(select, "_kept_in_band", lambda *a: taken.append(real(*a)) or taken[-1])
        assert global_sparsities(layers, s, score=score) == full
    assert len(taken) == 1
    if not ties:
        assert taken[0] is not None  # the band held the boundary: no fallback to the sort


# -- what storage and deployment read from the contract -------------------------------------------

# spec -> (element_granular, index_group spec or None, quota_levels specs)
CONTRACT = {
    "fine": (True, None, ("fine",)),
    "vector": (False, "vector", ("vector",)),
    "kernel": (False, "kernel", ("kernel",)),
    "filter": (False, "filter", ("filter",)),
    "channel": (False, "channel", ("channel",)),
    "shape": (False, "shape", ("shape",)),
    "window": (True, None, ("window",)),
    "kernel-quota": (False, "kernel", ("kernel-quota",)),
    "combined": (True, "kernel", ("kernel-quota", "window")),
    "combined:0.3": (True, "kernel", ("kernel-quota", "window")),
    "nm:2:4": (True, None, ("nm:2:4",)),
    "nm:1:8": (True, None, ("nm:1:8",)),
    "block:4x4": (False, "block:4x4", ("block:4x4",)),
    "block:1x2": (False, "block:1x2", ("block:1x2",)),
    "neuron": (False, "neuron", ("neuron",)),
    "head:4": (False, "head:4", ("head:4",)),
    "head:2:cols": (False, "head:2:cols", ("head:2:cols",)),
}


def test_contract_covers_every_registered_structure():
    assert {parse_structure(spec).name for spec in CONTRACT} == set(STRUCTURES.names())


@pytest.mark.parametrize("spec", list(CONTRACT))
def test_contract_values(spec):
    element_granular, index_group, levels = CONTRACT[spec]
    st_ = parse_structure(spec)
    assert st_.element_granular is element_granular
    assert (None if st_.index_group is None else st_.index_group.spec) == index_group
    assert tuple(level.spec for level in st_.quota_levels) == levels
    # a group is a whole output channel (neuron: of a Linear-like layer)
    assert st_.whole_filters is (spec in ("filter", "neuron"))


@pytest.mark.parametrize("spec", list(CONTRACT))
def test_contract_levels_nest_and_index_groups_are_the_outer_groups(spec):
    """Level i+1's (G, E) of each domain is level i's group, row-major; the last level's groups
    are the structure's; the index group's groups are the first level's, in the same order."""
    st_ = parse_structure(spec)
    w4 = torch.arange(16 * 8 * 3 * 3).reshape(16, 8, 3, 3)
    levels = st_.quota_levels
    for outer, inner in zip(levels, levels[1:]):
        _, g, e = inner.layout(tuple(w4.shape))
        assert torch.equal(outer.group_view(w4).reshape(-1, g, e), inner.group_view(w4))
    assert torch.equal(levels[-1].group_view(w4), st_.group_view(w4))
    if st_.index_group is not None:
        e = levels[0].layout(tuple(w4.shape))[2]
        groups = st_.index_group.group_view(w4).reshape(-1, e)
        assert torch.equal(groups, levels[0].group_view(w4).reshape(-1, e))
