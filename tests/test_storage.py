"""Storage encodings: exact bit counts on hand-made masks, and the bound."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as hs

from sparsegrain.analysis.counting import ceil_log2, log2_comb, mask_fillers, relative_fillers
from sparsegrain.analysis.storage import (
    ENCODINGS,
    BitWidths,
    best_encoding,
    bound,
    encode,
    format_storage,
    layer_storage,
    model_storage,
)
from sparsegrain.structures import parse_structure, shape_4d

B = BitWidths()  # value 32, index 4: a csr entry is 36 bits, the largest gap 15


def row(*values):
    """A (1, N) Linear weight: flat positions are the list positions."""
    return torch.tensor([values], dtype=torch.float32)


def test_bit_widths_are_validated():
    assert (B.value, B.index, B.dense) == (32, 4, 32)
    with pytest.raises(ValueError, match="BitWidths.index"):
        BitWidths(index=0)
    with pytest.raises(ValueError, match="BitWidths.value"):
        BitWidths(value=2.5)


def test_exact_helpers():
    assert [ceil_log2(x) for x in (1, 2, 3, 4, 5, 9, 36)] == [0, 1, 2, 2, 3, 4, 6]
    assert log2_comb(9, 0) == 0.0 and log2_comb(4, 2) == math.log2(6)
    exact = math.log2(math.comb(10_000, 3_000))  # above 4096: lgamma path
    assert log2_comb(10_000, 3_000) == pytest.approx(exact, rel=1e-9)


def test_relative_fillers_gap_rule():
    fill = lambda *p, b=4: relative_fillers(torch.tensor(p), b)  # noqa: E731
    # Largest gap 2**4 - 1 = 15; a gap g needs (g - 1) // 15 fillers.
    assert fill(3, 23, 24) == 1  # gaps 3, 20, 1: the gap of 20 -> 1 filler (15 + 5)
    assert fill(0, 15) == 0  # gaps 0, 15
    assert fill(0, 16) == 1  # gap 16 = 15 + 1
    assert fill(0, 30) == 1  # 15 + 15
    assert fill(0, 31) == 2  # 15 + 15 + 1
    # First entry: gap counted from position 0 (not -1).
    assert fill(0) == 0 and fill(15) == 0 and fill(16) == 1
    # 1-bit index: largest gap 1; gap 0 only for an entry at position 0.
    assert fill(0, b=1) == 0 and fill(1, b=1) == 0 and fill(2, b=1) == 1 and fill(5, b=1) == 4
    assert fill() == 0


def test_fine_bitmap_and_csr_with_filler():
    w = torch.zeros(1, 40)
    w[0, [3, 23, 24]] = torch.tensor([1.0, -2.0, 0.5])
    r = layer_storage(w, "fine")
    assert r["bitmap"] == 40 + 3 * 32  # one bit per weight + 3 values = 136
    # gaps 3, 20 (-> 1 filler), 1: 4 entries of 32 + 4 bits
    assert r["csr"] == 4 * 36 and r["detail"]["csr"]["fillers"] == 1
    assert "group" not in r and "quota" not in r and "quota-rank" not in r
    assert r["best"] == "bitmap" and r["best_bits"] == 136
    assert r["bound"] == pytest.approx(math.log2(math.comb(40, 3)) + 96)  # log2 9880 + 96
    assert r["dense"] == 40 * 32 and r["ratio"] == pytest.approx(1280 / 136)
    assert (r["nnz"], r["numel"], r["sparsity"]) == (3, 40, 37 / 40)


def test_csr_first_entry_counted_from_position_zero():
    at15 = torch.zeros(1, 20)
    at15[0, 15] = 1.0
    at16 = torch.zeros(1, 20)
    at16[0, 16] = 1.0
    assert layer_storage(at15, "fine")["csr"] == 36  # gap 15: no filler
    assert layer_storage(at16, "fine")["csr"] == 72  # gap 16: a filler at 15, then gap 1
    assert layer_storage(at16, "fine", BitWidths(value=8, index=5))["csr"] == 13  # gap 16 <= 31


def test_group_kernel_bitmap_addressing_and_zeros_in_kept_groups():
    # (2, 2, 2, 2): kernels in (k, c) order 0..3; kernels 0 and 3 kept.
    m = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    m[0, 0] = True
    m[1, 1] = True
    r = layer_storage(m, "kernel")
    # group ids 0, 3: relative 2 entries * 4 = 8 bits > 4-bit group bitmap -> bitmap
    assert r["detail"]["group"]["addressing"] == "bitmap"
    assert r["group"] == 4 + 2 * 4 * 32  # 260
    assert r["bitmap"] == 16 + 8 * 32  # 272
    assert r["csr"] == 8 * 36  # positions 0-3, 12-15: gaps 0,1,1,1,9,1,1,1, no filler
    assert r["best"] == "group"
    assert r["bound"] == pytest.approx(math.log2(6) + 256)  # log2 C(4, 2) + 8 values

    w = m.float()
    w[1, 1, 0, 0] = 0.0  # a zero inside a kept kernel: still stored as a value by group
    r = layer_storage(w, "kernel")
    assert r["group"] == 260 and r["bitmap"] == 16 + 7 * 32  # 240
    assert r["best"] == "bitmap"
    # fine level now smaller: log2 C(16, 7) + 7 * 32 = log2 11440 + 224 < log2 6 + 256
    assert r["bound"] == pytest.approx(math.log2(11440) + 224)
    assert r["below_bound"] == []


def test_group_relative_addressing_with_filler():
    # filter on a (100, 1) Linear: 100 groups of one element; filters 0 and 20 kept.
    w = torch.zeros(100, 1)
    w[[0, 20], 0] = 1.0
    g = layer_storage(w, "filter")["detail"]["group"]
    # gaps 0, 20 -> 1 filler: 3 gaps * 4 + one filler value 32 = 44 < 100-bit group bitmap
    assert g == {"value": 3 * 32, "index": 3 * 4, "fillers": 1, "addressing": "relative"}


def test_variable_length_codes_can_go_below_the_bound():
    # filter on (40, 2): filters 1 and 5 kept -> group gaps 1, 4, no filler
    w = torch.zeros(40, 2)
    w[[1, 5]] = 1.0
    r = layer_storage(w, "filter")
    assert r["group"] == 2 * 4 + 4 * 32  # 136, relative addressing
    assert r["csr"] == 4 * 36  # positions 2, 3, 10, 11: gaps 2, 1, 7, 1
    assert r["bitmap"] == 80 + 128
    assert r["bound"] == pytest.approx(math.log2(780) + 128)  # log2 C(40, 2) + 4 values: 137.6
    assert r["below_bound"] == ["group"] and r["best"] == "group"
    # fine, two non-zeros at the start: csr 72 < log2 C(100, 2) + 64 = 76.3
    clustered = torch.zeros(1, 100)
    clustered[0, :2] = 1.0
    r = layer_storage(clustered, "fine")
    assert r["csr"] == 72 and r["below_bound"] == ["csr"]


def test_csr_worst_case_is_never_below_the_bound():
    # Exhaustively, over all masks of N = 10 with k ones, the costliest csr is >= the bound.
    n = 10
    for b, v in ((1, 0), (2, 0), (3, 1)):
        worst = [0] * (n + 1)
        for bits in itertools.product((0, 1), repeat=n):
            pos = torch.tensor([i for i, x in enumerate(bits) if x], dtype=torch.int64)
            k = len(pos)
            worst[k] = max(worst[k], (k + relative_fillers(pos, b)) * (b + v))
        for k in range(n + 1):
            assert worst[k] >= log2_comb(n, k) + k * v


def test_quota_window():
    # (1, 2, 3, 3): 2 kernels of 9, each keeps n = 2
    m = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    m[0, 0, 0, 0] = m[0, 0, 2, 2] = True  # positions 0, 8
    m[0, 1, 1, 1] = m[0, 1, 2, 2] = True  # positions 13, 17
    r = layer_storage(m, "window")
    assert r["quota"] == 2 * 2 * 4 + 4 * 32  # ceil(log2 9) = 4 bits per kept element: 144
    assert r["quota-rank"] == 2 * 6 + 4 * 32  # ceil(log2 C(9, 2) = 36) = 6 per kernel: 140
    assert r["bitmap"] == 18 + 128 and r["csr"] == 4 * 36  # gaps 0, 8, 5, 4
    assert "group" not in r
    assert r["best"] == "quota-rank"
    assert r["bound"] == pytest.approx(2 * math.log2(36) + 128)


def test_quota_window_pads_uneven_domains():
    # A weight (not a mask): kernel 0 has 2 non-zeros, kernel 1 only 1 -> n = 2, a stored zero.
    w = torch.zeros(1, 2, 3, 3)
    w[0, 0, 0, 0] = w[0, 0, 0, 1] = w[0, 1, 0, 0] = 1.0
    d = layer_storage(w, "window")["detail"]
    assert d["quota"] == {"value": 4 * 32, "index": 16, "fillers": 0, "addressing": ""}


def test_quota_kernel_quota():
    # (2, 3, 2, 2): each filter keeps 1 of 3 kernels: kernels (0, 0) and (1, 2)
    m = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    m[0, 0] = m[1, 2] = True
    r = layer_storage(m, "kernel-quota")
    assert r["quota"] == 2 * 1 * 2 + 2 * 4 * 32  # ceil(log2 3) = 2 per kept kernel: 260
    assert r["quota-rank"] == 2 * 2 + 256  # ceil(log2 C(3, 1)) = 2 per filter: 260
    assert r["group"] == 6 + 256  # kernel ids 0, 5: relative 8 bits > 6-bit bitmap
    assert r["bitmap"] == 24 + 256
    assert r["best"] == "quota"  # tie with quota-rank: the earlier in ENCODINGS
    assert r["bound"] == pytest.approx(2 * math.log2(3) + 256)


def test_quota_nm_is_tensor_core_metadata():
    w = row(1, 1, 0, 0, 0, 1, 0, 1)  # two domains of 4, 2 kept in each
    r = layer_storage(w, "nm:2:4")
    assert r["detail"]["quota"]["index"] == 2 * 4  # 2 bits per kept element
    assert r["quota"] == 8 + 4 * 32  # 136
    assert r["quota-rank"] == 2 * 3 + 128  # ceil(log2 6) = 3 per domain: 134
    assert r["bitmap"] == 8 + 128 and r["csr"] == 4 * 36  # gaps 0, 1, 4, 2
    assert r["best"] == "quota-rank"
    assert r["bound"] == pytest.approx(2 * math.log2(6) + 128)


def test_quota_combined_two_levels():
    # (2, 2, 2, 2): each filter keeps 1 of 2 kernels, each kept kernel 2 of 4 elements
    m = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    m[0, 0, 0, 0] = m[0, 0, 1, 1] = True
    m[1, 1, 0, 1] = m[1, 1, 1, 0] = True
    r = layer_storage(m, "combined")
    # quota: 2 filters * 1 kernel * ceil(log2 2) + 2 kernels * 2 elements * ceil(log2 4) = 2 + 8
    assert r["quota"] == 10 + 4 * 32
    # rank: 2 * ceil(log2 C(2, 1)) + 2 * ceil(log2 C(4, 2)) = 2 + 6
    assert r["quota-rank"] == 8 + 128
    assert r["group"] == 4 + 2 * 4 * 32  # kernel granularity: 4-bit bitmap, zeros stored: 260
    assert r["bitmap"] == 16 + 128
    assert r["best"] == "quota-rank"
    assert r["bound"] == pytest.approx(2 * 1 + 2 * math.log2(6) + 128)


def test_structure_must_fit():
    with pytest.raises(ValueError, match="window needs a kernel larger than 1x1"):
        layer_storage(torch.ones(4, 4), "window")


def test_model_storage_totals_and_dense_layers():
    a = torch.zeros(2, 2, 2, 2)
    a[0, 0] = 1.0
    dense = torch.ones(3, 4)
    res = model_storage([("a", a, "kernel"), ("fc", dense, None)])
    ra, rfc = res["layers"]
    assert rfc["structure"] == "dense" and rfc["best"] == "dense" and rfc["best_bits"] == 12 * 32
    assert ra["group"] == 4 + 4 * 32
    t = res["total"]
    assert t["dense"] == 16 * 32 + 12 * 32
    assert t["best"] == ra["best_bits"] + 384
    assert t["group"] == ra["group"] + 384 and t["bitmap"] == ra["bitmap"] + 384
    assert "quota" not in t
    assert t["ratio"] == pytest.approx(t["dense"] / t["best"])
    text = format_storage(res)
    assert "kernel" in text and "stored dense" in text
    res = model_storage([("a", a, "kernel"), ("b", a, "fine")])
    assert "group" not in res["total"] and "csr" in res["total"]


STRUCTS = ["fine", "vector", "kernel", "filter", "channel", "shape", "window", "kernel-quota",
           "combined", "nm:2:4", "block:2x4"]  # fmt: skip
SHAPES = [(4, 4, 3, 3), (8, 2, 2, 2), (6, 3, 4), (8, 8)]


@settings(max_examples=80, deadline=None)
@given(
    spec=hs.sampled_from(STRUCTS),
    shape=hs.sampled_from(SHAPES),
    target=hs.floats(0.0, 0.95),
    value=hs.sampled_from([1, 4, 8, 32]),
    index=hs.sampled_from([1, 2, 3, 4, 8]),
    extra_zeros=hs.booleans(),
    seed=hs.integers(0, 2**16),
)
def test_bound_never_above_fixed_length_encodings(
    spec, shape, target, value, index, extra_zeros, seed
):
    st = parse_structure(spec)
    assume(st.fits(shape) is None)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    t = w * st.mask(w, target)
    if extra_zeros:  # zeros inside kept groups, as a trained weight may have
        t = t * (torch.rand(shape, generator=gen) > 0.3)
    bits = BitWidths(value=value, index=index)
    r = layer_storage(t, st, bits)
    costs = {n: r[n] for n in ENCODINGS if n in r}
    assert r["best"] == min(costs, key=costs.get) and r["best_bits"] == min(costs.values())
    fixed = [n for n in costs if n != "csr"]
    if r["detail"].get("group", {}).get("addressing") == "relative":
        fixed.remove("group")
    for name in fixed:
        assert r["bound"] <= costs[name] + 1e-9, name
    assert set(r["below_bound"]) <= set(costs) - set(fixed)
    if not extra_zeros and value == 32 and spec != "combined":
        # A mask: the bound is the structure's own term, D log2 C(G, n) + D*n*E*v.
        d, g, e = st.layout(st._checked(shape))
        n = st.keep_per_domain(shape, target)
        assert r["bound"] == pytest.approx(d * log2_comb(g, n) + d * n * e * 32)


def test_large_layer_uses_lgamma_and_stays_below_bitmap():
    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    m = parse_structure("fine").mask(w, 0.5)
    costs = encode(m, "fine")
    assert bound(m, "fine") <= costs["bitmap"].total
    exact = math.log2(math.comb(36864, 18432))
    assert bound(m, "fine") == pytest.approx(exact + 18432 * 32, rel=1e-12)


# -- the numpy counts against a plain reference ---------------------------------------------------


def _reference_fillers(positions: torch.Tensor, b: int) -> int:
    if positions.numel() == 0:
        return 0
    gaps = torch.diff(positions.to(torch.int64), prepend=positions.new_zeros(1))
    return int(((gaps - 1).clamp(min=0) // (2**b - 1)).sum())


def _reference_storage(w: torch.Tensor, spec: str, bits: BitWidths) -> dict:
    """The counts of the module doc written plainly in torch: every position listed, every
    reduction a torch reduction (the computation layer_storage made before it used numpy)."""
    st = parse_structure(spec)
    occ4 = (w != 0).reshape(shape_4d(w.shape))
    numel, nnz = occ4.numel(), int(occ4.sum())
    v, b = bits.value, bits.index
    fill = _reference_fillers(occ4.reshape(-1).nonzero().reshape(-1), b)
    costs = {
        "bitmap": (nnz * v, numel, 0, ""),
        "csr": ((nnz + fill) * v, (nnz + fill) * b, fill, ""),
    }
    terms = [log2_comb(numel, nnz) + nnz * v]
    if st.index_group is not None:
        view = st.index_group.group_view(occ4)
        kept, e = view.any(-1).reshape(-1), view.shape[-1]
        k = int(kept.sum())
        f = _reference_fillers(kept.nonzero().reshape(-1), b)
        rel = ((k + f) * b, f * e * v)
        if sum(rel) < kept.numel():
            costs["group"] = (k * e * v + rel[1], rel[0], f, "relative")
        else:
            costs["group"] = (k * e * v, kept.numel(), 0, "bitmap")
        terms.append(log2_comb(kept.numel(), k) + k * e * v)
    if st.balanced:
        levels = []
        for level in st.quota_levels:
            kept = level.group_view(occ4).any(-1)
            d = kept.shape[0] if not levels else levels[-1][0] * levels[-1][2]
            levels.append((d, kept.shape[1], int(kept.sum(1).max())))
        d, _, n = levels[-1]
        values = d * n * st.quota_levels[-1].layout(tuple(occ4.shape))[2] * v
        costs["quota"] = (values, sum(d * n * ceil_log2(g) for d, g, n in levels), 0, "")
        rank = sum(d * ceil_log2(math.comb(g, n)) for d, g, n in levels)
        costs["quota-rank"] = (values, rank, 0, "")
        terms.append(sum(d * log2_comb(g, n) for d, g, n in levels) + values)
    totals = {name: c[0] + c[1] for name, c in costs.items()}
    best = min((name for name in ENCODINGS if name in totals), key=totals.__getitem__)
    return {"costs": costs, "totals": totals, "best": best, "bound": min(terms), "nnz": nnz}


_SPECS = ("fine", "vector", "kernel", "filter", "channel", "shape", "window", "kernel-quota")
_SPECS += ("combined", "nm:2:4", "nm:1:8", "block:2x3")
_SHAPES = ((6, 5, 3, 3), (8, 16, 1, 1), (4, 7, 3), (12, 24), (16, 40, 3, 3))


@pytest.mark.parametrize("spec", _SPECS)
def test_counts_equal_the_plain_reference_on_random_masks(spec):
    st = parse_structure(spec)
    rng = torch.Generator().manual_seed(len(spec))
    cases = 0
    for shape in _SHAPES:
        if st.fits(shape) is not None:
            continue
        for density in (0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0):
            w = torch.randn(shape, generator=rng)
            w = w * (torch.rand(shape, generator=rng) < density)
            if density in (0.2, 0.5) and st.balanced:  # structured: whole groups, balanced
                w = w * st.mask(w, 1 - density)
            for bits in (BitWidths(), BitWidths(index=1), BitWidths(index=2), BitWidths(16, 3)):
                ref, row = _reference_storage(w, spec, bits), layer_storage(w, spec, bits)
                assert row["nnz"] == ref["nnz"] and row["best"] == ref["best"]
                assert {k: row[k] for k in ref["totals"]} == ref["totals"]
                assert set(row["detail"]) == set(ref["totals"])
                for name, (value, index, fillers, addressing) in ref["costs"].items():
                    assert row["detail"][name] == {
                        "value": value, "index": index, "fillers": fillers,
                        "addressing": addressing,
                    }  # fmt: skip
                assert row["bound"] == ref["bound"]
                name, cost = best_encoding(w, spec, bits)
                assert (name, cost.total) == (ref["best"], ref["totals"][ref["best"]])
                cases += 1
    assert cases >= 4 * 7 * 2


@pytest.mark.parametrize("b", [1, 2, 3, 4, 5])
def test_fillers_from_runs_equal_fillers_from_gaps(b):
    rng = np.random.default_rng(b)
    for n in (1, 2, 3, 10, 31, 32, 33, 200, 1000):
        for density in (0.0, 0.02, 0.1, 0.3, 0.7, 1.0):
            occ = rng.random(n) < density
            if density == 0.02 and n > 3:  # long runs at both ends and inside
                occ[:] = False
                occ[[n // 3, n // 3 + 1, n - 2]] = True
            want = _reference_fillers(torch.from_numpy(np.flatnonzero(occ)), b)
            assert mask_fillers(occ, b) == want, (n, density)
            assert relative_fillers(np.flatnonzero(occ), b) == want
    assert mask_fillers(np.array([False] * 40 + [True]), 4) == 2  # gap 40 = 15 + 15 + 10
    assert mask_fillers(np.array([True] + [False] * 40 + [True]), 4) == 2  # gap 41
    assert mask_fillers(np.array([True] + [False] * 40), 4) == 0  # nothing after the run
