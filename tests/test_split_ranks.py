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
    write_compressed,
)
from sparsegrain.deploy.compressed.splits import split_positions, split_ranks
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
