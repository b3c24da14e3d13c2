"""Split ranks, the wide quota-rank code of format version 2: the rank the module doc defines
(checked against a one-domain transcription of it), a bijection onto [0, C(G, n)), the sizes
storage.py predicts, and files of both versions read and written bit for bit."""

import itertools
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colex_rank, stretched_subsets
from hypothesis import given, settings
from hypothesis import strategies as hs
from safetensors.torch import load_file

from sparsegrain.analysis.counting import ceil_log2
from sparsegrain.analysis.storage import BitWidths, encode
from sparsegrain.core.errors import ConfigError
from sparsegrain.deploy.compressed import (
    VERSION,
    BitReader,
    decode_layer,
    encode_layer,
    read_compressed,
    splits,
    write_compressed,
)
from sparsegrain.deploy.compressed.bits import BitWriter
from sparsegrain.deploy.compressed.splits import (
    from_ints,
    split_keep_words,
    split_positions,
    split_rank_words,
    split_ranks,
    to_ints,
    words_for,
)
from sparsegrain.structures import parse_structure

DATA = Path(__file__).parent / "data"


def reference_rank(kept, g: int) -> int:
    """The split rank of one subset, transcribed from splits.py's module doc."""
    kept = set(int(c) for c in kept)
    nodes = []  # (groups, kept, rank) per leaf of 16
    for start in range(0, g, 16):
        local = [c - start for c in range(start, min(start + 16, g)) if c in kept]
        nodes.append((min(16, g - start), len(local), colex_rank(local)))
    while len(nodes) > 1:
        joined = []
        for (hl, kl, rl), (hr, kr, rr) in zip(nodes[0::2], nodes[1::2]):
            m = kl + kr
            off = sum(math.comb(hl, j) * math.comb(hr, m - j) for j in range(kl))
            joined.append((hl + hr, m, off + rl * math.comb(hr, kr) + rr))
        nodes = joined + nodes[len(nodes) - len(nodes) % 2 :]
    return nodes[0][2]


def test_the_rank_of_one_group_among_17():
    # Leaves of 16 and 1: the subsets keeping the lone last group come first (k_L = 0), then
    # group c of the first leaf at 1 + c. The colex rank of {c} would be c.
    ranks = split_ranks(np.arange(17)[:, None], 17)
    assert ranks == [*range(1, 17), 0]
    assert split_positions(ranks, 17, 1).reshape(-1).tolist() == list(range(17))


@pytest.mark.parametrize("g,n", [(17, 8), (33, 3), (66, 64), (70, 2), (130, 2), (97, 3)])
def test_every_subset_gets_its_own_rank_below_the_count(g, n):
    pos = np.array(list(itertools.combinations(range(g), n)), dtype=np.int64)
    ranks = split_ranks(pos, g)
    assert sorted(ranks) == list(range(math.comb(g, n)))
    assert np.array_equal(split_positions(ranks, g, n), pos)


@pytest.mark.parametrize(
    "g,n",
    [(16, 8), (64, 32), (65, 30), (80, 40), (127, 1), (129, 128), (200, 97), (300, 150)]
    + [(1000, 40), (1024, 512), (2048, 1024), (3000, 2991)],
)
def test_ranks_are_the_definition_and_read_back(g, n):
    pos = stretched_subsets(g, n, np.random.default_rng(g + n))
    ranks = split_ranks(pos, g)
    assert ranks == [reference_rank(row, g) for row in pos]
    assert max(ranks) < math.comb(g, n)
    back = split_positions(ranks, g, n)
    assert back.dtype == np.int64 and np.array_equal(back, pos)


@settings(max_examples=60, deadline=None)
@given(hs.integers(1, 300).flatmap(lambda g: hs.tuples(hs.just(g), hs.sets(hs.integers(0, g - 1)))))
def test_any_subset_round_trips(case):
    g, kept = case
    pos = np.array([sorted(kept)], dtype=np.int64).reshape(1, len(kept))
    (rank,) = split_ranks(pos, g)
    assert 0 <= rank < math.comb(g, len(kept)) and rank == reference_rank(kept, g)
    assert np.array_equal(split_positions([rank], g, len(kept)), pos)


def _off(hl: int, hr: int, m: int, k: int) -> int:
    return sum(math.comb(hl, j) * math.comb(hr, m - j) for j in range(k))


@pytest.mark.parametrize("hl,hr", [(64, 64), (64, 1), (96, 96), (128, 5), (512, 512)])
def test_windows_of_off_rows_are_the_sums(hl, hr):
    rows: dict = {}
    for m in sorted({0, 1, hr, hl, (hl + hr) // 2, (hl + hr) // 2 + 1, hl + hr - 1, hl + hr}):
        row = splits._row(hl, hr, m, rows)
        lo, top = max(0, m - hr), min(hl, m)
        row.cover(lo, top + 1)
        assert (row.k0, row.k1) == (lo, top + 1)
        assert row.ints == [_off(hl, hr, m, k) for k in range(lo, top + 2)]
        assert row.ints[-1] == math.comb(hl + hr, m)
        assert to_ints(row.words) == row.ints
        assert row.prefix.tolist() == [v >> row.shift for v in row.ints]
        assert int(row.prefix[-1]) < 2**63


def test_a_window_grows_until_it_holds_every_rank():
    hl = hr = 256
    total = math.comb(512, 256)
    for low_rank, high_rank in [
        (0, 0),
        (total - 1, total - 1),
        (0, total - 1),
        (total // 3, total // 2),
    ]:
        row = splits._Row(hl, hr, 256)
        row.cover_ranks(low_rank >> row.shift, high_rank >> row.shift)
        assert row.k0 == 0 or row.ints[0] < low_rank
        assert row.k1 == 257 or row.ints[-1] > high_rank


@pytest.mark.parametrize("g,n", [(128, 64), (256, 128), (300, 7), (1024, 512)])
def test_boundary_ranks_read_back(g, n):
    # Ranks on the boundaries of the root's blocks (off(n, k) and one below) and the two ends:
    # prefixes tie with a row entry, so the exact comparison decides.
    sizes = splits._sizes(g)[-2]
    hl, hr = sizes[0], sum(sizes[1:])
    lo, top = max(0, n - hr), min(hl, n)
    ranks = {0, 1, math.comb(g, n) - 1, math.comb(g, n) // 2}
    for k in range(lo + 1, top + 1):
        ranks |= {_off(hl, hr, n, k), _off(hl, hr, n, k) - 1}
    ranks = sorted(ranks)
    pos = split_positions(ranks, g, n)
    assert pos.shape == (len(ranks), n) and (np.diff(pos, axis=1) > 0).all()
    assert split_ranks(pos, g) == ranks
    assert [reference_rank(row, g) for row in pos[:: max(1, len(pos) // 8)]] == ranks[
        :: max(1, len(pos) // 8)
    ]


def test_layers_of_several_sizes_rank_together_as_one_by_one():
    rng = np.random.default_rng(8)
    specs = [(1024, 512), (128, 64), (2048, 1024), (300, 150), (128, 20), (70, 35)]
    keeps = [splits.keep_of(stretched_subsets(g, n, rng), g) for g, n in specs]
    together = split_rank_words(keeps)
    for keep, words in zip(keeps, together):
        assert np.array_equal(words, split_rank_words([keep])[0])
    back = split_keep_words([(w, g, n) for w, (g, n) in zip(together, specs)])
    assert all(np.array_equal(a, b) for a, b in zip(back, keeps))


@pytest.mark.parametrize("words", [1, 2, 5, 16])
def test_divmod_of_words_is_exact(words):
    rng = np.random.default_rng(words)
    bits = 64 * words
    for c in [2, 3, 7, 2**31, 2**32 + 1, 2**61 - 1, 3**40, 2 ** (bits // 2) + 12345]:
        if c.bit_length() + 3 > bits:
            continue
        vals = [0, 1, c - 1, c, 2 * c - 1, 2**bits - 1, (2**bits - 1) // c * c]
        vals += [int.from_bytes(rng.bytes(8 * words), "little") for _ in range(40)]
        q, r = splits._divmod(from_ints(vals, words), c)
        assert to_ints(q) == [v // c for v in vals] and to_ints(r) == [v % c for v in vals]


@pytest.mark.parametrize("hr", [64, 1, 6, 40])
def test_two_word_pairs_equal_the_general_path(hr):
    # Pairs of one-word nodes (h_L = 64) are joined and split in numpy with 32-bit halves; the
    # general path (packed Python integers) must agree on every m.
    rng = np.random.default_rng(hr)
    kl = rng.integers(0, 65, 4000)
    kr = rng.integers(0, hr + 1, 4000)
    kl[:65], kr[:65] = np.arange(65), np.minimum(np.arange(65), hr)  # every k_L once
    rl = np.array([int(rng.integers(0, math.comb(64, k))) for k in kl], dtype=np.uint64)
    rr = np.array([int(rng.integers(0, math.comb(hr, k))) for k in kr], dtype=np.uint64)
    rl[:65] = [math.comb(64, k) - 1 for k in kl[:65]]  # the largest ranks
    rows: dict = {}
    one = splits._join2(rl[:, None], rr[:, None], kl, kr, 64, hr, rows)
    assert np.array_equal(one, splits._join(rl[:, None], rr[:, None], kl, kr, 64, hr, rows))
    m = kl + kr
    want = [
        _off(64, hr, mv, k) + int(a) * math.comb(hr, b) + int(c)
        for mv, k, a, b, c in zip(m[:200], kl, rl, kr, rr)
    ]
    assert to_ints(one[:200]) == want
    back_l, back_r, back_k = splits._split2(one, m, 64, hr, rows)
    assert np.array_equal(back_k, kl)
    assert np.array_equal(back_l[:, 0], rl) and np.array_equal(back_r[:, 0], rr)


@pytest.mark.parametrize("width", [65, 127, 128, 129, 1019, 2042])
def test_word_fields_are_the_integer_fields(width):
    rng = np.random.default_rng(width)
    vals = [2**width - 1, 0, 1] + [int.from_bytes(rng.bytes(-(-width // 8)), "big") >> (
        (-width) % 8) for _ in range(30)]  # fmt: skip
    for lead in (0, 3, 7, 8, 13):
        a, b = BitWriter(), BitWriter()
        for wr in (a, b):
            wr.write_bits(np.ones(lead, dtype=np.uint8))
        a.write_words(from_ints(vals, words_for(width) + 1), width)  # an extra zero word
        b.write_ints(vals, width)
        assert a.getvalue() == b.getvalue() and a.nbits == b.nbits == lead + 33 * width
        rd = BitReader(a.getvalue(), a.nbits)
        rd.read_bits(lead)
        got = rd.read_words(33, width)
        assert got.shape == (33, words_for(width)) and to_ints(got) == vals
    with pytest.raises(ValueError, match=f"does not fit in {width} bits"):
        BitWriter().write_words(from_ints([2**width], words_for(width + 1)), width)
    with pytest.raises(ValueError, match="width 64"):
        BitWriter().write_words(from_ints([5], 1), 64)


# -- sections and files ---------------------------------------------------------------------------


def test_a_wide_layer_costs_the_same_bits_in_both_versions():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 1024, 1, 1, generator=g)
    w = w * parse_structure("kernel-quota").mask(w, 0.5)
    one, two = (encode_layer(w, "kernel-quota", "quota-rank", version=v) for v in (1, 2))
    assert VERSION == 2
    assert one["bits"] == two["bits"] == encode(w, "kernel-quota")["quota-rank"].total
    assert one["bits"] == 64 * (512 * 32 + 1019)
    assert one["data"][: 64 * 512 * 4] == two["data"][: 64 * 512 * 4]  # the values
    rd = BitReader(two["data"], two["bits"])
    rd.read(64 * 512, 32)
    kept = (w.reshape(64, 1024) != 0).numpy()
    assert rd.read_ints(64, 1019) == [reference_rank(np.flatnonzero(k), 1024) for k in kept]
    for v, out in ((1, one), (2, two)):
        back = decode_layer(
            out["data"], w.shape, "kernel-quota", "quota-rank", out["counts"], version=v
        )
        assert torch.equal(back, w)


def _fixture_structures() -> dict[str, str]:
    _, meta = read_compressed(DATA / "compressed_v1.sgc")
    return {t["layer"]: t["structure"] for t in meta["tensors"] if "layer" in t}


def test_both_versions_are_written_bit_for_bit(tmp_path):
    # tests/data/compressed_v2.sgc: the state_dict of compressed_v1.sgc (ranks of 65, 77 and 111
    # bits among its quota-rank layers) in version 2.
    sd, _ = read_compressed(DATA / "compressed_v1.sgc")
    structures, bits = _fixture_structures(), BitWidths(value=32, index=4)
    for version in (1, 2):
        out = tmp_path / f"v{version}.sgc"
        info = write_compressed(sd, structures, out, bits, version=version)
        assert out.read_bytes() == (DATA / f"compressed_v{version}.sgc").read_bytes()
        assert info["payload_bytes"] == 6617 and info["ratio"] == pytest.approx(1.0, abs=1e-3)
    ref = load_file(DATA / "compressed_v1.safetensors")
    back, meta = read_compressed(DATA / "compressed_v2.sgc")
    assert meta["version"] == 2 and sorted(back) == sorted(ref)
    for k in ref:
        zero = ref[k] == 0  # zeros come back as +0.0
        assert torch.equal(back[k][~zero], ref[k][~zero]) and (back[k][zero] == 0).all(), k


def test_an_unknown_version_is_named(tmp_path):
    sd, _ = read_compressed(DATA / "compressed_v1.sgc")
    with pytest.raises(ValueError, match=r"format version 3; allowed: 1, 2"):
        write_compressed(sd, _fixture_structures(), tmp_path / "x.sgc", version=3)
    assert not (tmp_path / "x.sgc").exists()
    with pytest.raises(ValueError, match=r"format version 0; allowed: 1, 2"):
        encode_layer(torch.ones(2, 80), "kernel-quota", "quota-rank", version=0)
    blob = bytearray((DATA / "compressed_v2.sgc").read_bytes())
    (size,) = struct.unpack("<I", blob[8:12])
    header = json.loads(zlib.decompress(blob[12 : 12 + size]))
    header["version"] = 3
    head = zlib.compress(json.dumps(header).encode())
    (tmp_path / "v3.sgc").write_bytes(
        blob[:8] + struct.pack("<I", len(head)) + head + blob[12 + size :]
    )
    with pytest.raises(ConfigError, match=r"has version 3; this reads 1, 2"):
        read_compressed(tmp_path / "v3.sgc")


def test_a_width_that_fits_63_bits_is_the_colex_rank_in_both_versions():
    pos = stretched_subsets(64, 32, np.random.default_rng(0))
    assert ceil_log2(math.comb(64, 32)) == 61
    w = torch.zeros(len(pos), 64)
    w[torch.arange(len(pos))[:, None], torch.from_numpy(pos)] = 1.0
    one, two = (encode_layer(w, "kernel-quota", "quota-rank", version=v) for v in (1, 2))
    assert one == two
    rd = BitReader(two["data"], two["bits"])
    rd.read(len(pos) * 32, 32)
    assert rd.read(len(pos), 61).tolist() == [colex_rank(r) for r in pos]


@pytest.mark.parametrize("hl,hr", [(16, 16), (32, 32), (16, 5), (48, 16), (32, 1)])
def test_pairs_of_one_word_split_on_every_block_boundary(hl, hr):
    # Nodes of at most 64 groups find k_L in one table of keys S(m) + off(m, k); the keys of
    # (32, 32) reach 2**64 - 1 (m = 64, r = 0). Every rank on a block boundary, one below it
    # and the last of every m split to the k_L of its block and join back.
    m, r, want_k = [], [], []
    for mv in range(hl + hr + 1):
        lo, top = max(0, mv - hr), min(hl, mv)
        for k in range(lo, top + 1):
            start, end = _off(hl, hr, mv, k), _off(hl, hr, mv, k + 1)
            for rv in {start, end - 1, (start + end) // 2}:
                m.append(mv), r.append(rv), want_k.append(k)
    m, want_k = np.array(m), np.array(want_k)
    words = np.array(r, dtype=np.uint64)[:, None]
    rl, rr, kl = splits._split_small(words, m, hl, hr, {})
    assert np.array_equal(kl, want_k)
    assert all(a < math.comb(hl, k) for a, k in zip(rl[:, 0].tolist(), kl.tolist()))
    assert all(b < math.comb(hr, mv - k) for b, mv, k in zip(rr[:, 0].tolist(), m, kl))
    back = splits._join_small(rl, rr, kl, m - kl, hl, hr, {})
    assert back[:, 0].tolist() == r
