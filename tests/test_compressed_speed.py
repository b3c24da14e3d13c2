"""Compressed files in linear time: version 1's wide colex ranks by bands of binomials, byte-aligned
fields copied as bytes, and files and sections of format version 1 (tests/data, written before
these paths existed) read and written bit for bit. Version 2's split ranks: test_split_ranks.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colex_rank, stretched_subsets
from safetensors.torch import load_file

from sparsegrain.analysis.counting import ceil_log2
from sparsegrain.analysis.storage import BitWidths, encode, layer_storage
from sparsegrain.deploy.compressed import (
    BitReader,
    BitWriter,
    decode_layer,
    decode_layers,
    encode_layer,
    encode_layers,
    ranks,
    read_compressed,
)
from sparsegrain.deploy.compressed.ranks import (
    read_ranks,
    read_ranks_many,
    write_ranks,
    write_ranks_many,
)
from sparsegrain.structures import parse_structure

DATA = Path(__file__).parent / "data"


def patterns(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns with zeros as +0.0 (the format does not keep a zero's sign)."""
    t = torch.where(t == 0, torch.zeros_like(t), t)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# -- fields ---------------------------------------------------------------------------------------


def test_byte_fields_at_and_off_a_byte_boundary():
    wr = BitWriter()
    wr.write([0x12345678, 0x9ABCDEF0], 32)  # byte aligned: copied as bytes
    wr.write([1, 0, 1], 1)
    wr.write([0xABCD], 16)  # 3 bits in: goes through single bits
    wr.write_int(5, 5)  # back on a byte boundary
    wr.write([0xFF], 8)
    assert wr.nbits == 64 + 3 + 16 + 5 + 8
    assert wr.getvalue() == bytes.fromhex("123456789abcdef0b579a5ff")
    rd = BitReader(wr.getvalue(), wr.nbits)
    assert rd.read(2, 32).tolist() == [0x12345678, 0x9ABCDEF0]
    assert rd.read(3, 1).tolist() == [1, 0, 1]
    assert rd.read(1, 16).tolist() == [0xABCD]
    assert rd.read_int(5) == 5 and rd.read(1, 8).tolist() == [0xFF] and rd.pos == rd.nbits
    with pytest.raises(EOFError):
        rd.read(1, 8)


def test_many_ints_in_one_call():
    vals = [0, 1, 2**77 - 1, 12345678901234567890123]
    wr = BitWriter()
    wr.write([1], 1)
    wr.write_ints(vals, 77)
    assert wr.nbits == 1 + 4 * 77 and len(wr.getvalue()) == 39
    rd = BitReader(wr.getvalue(), wr.nbits)
    assert rd.read(1, 1).tolist() == [1] and rd.read_ints(4, 77) == vals
    with pytest.raises(ValueError, match="does not fit in 77 bits"):
        wr.write_ints([2**77], 77)


# -- wide ranks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("g,n", [(80, 40), (200, 1), (200, 199), (300, 100), (150, 150)])
def test_version_1_wide_ranks_are_the_colex_rank(g, n):
    rng = np.random.default_rng(g + n)
    rows = [np.sort(rng.permutation(g)[:n]) for _ in range(5)]
    rows += [np.arange(n), np.arange(g - n, g)]  # the first and the last subset
    pos = torch.from_numpy(np.stack(rows).astype(np.int64))
    width = ceil_log2(math.comb(g, n))
    wr = BitWriter()
    write_ranks(wr, pos, g, n, version=1)
    assert wr.nbits == len(rows) * width
    rd = BitReader(wr.getvalue(), wr.nbits)
    ranks = rd.read_ints(len(rows), width)
    assert ranks == [colex_rank(r) for r in rows]
    assert ranks[-2:] == [0, math.comb(g, n) - 1]
    back = read_ranks(BitReader(wr.getvalue(), wr.nbits), len(rows), g, n, version=1)
    assert torch.equal(back, pos)


@pytest.mark.parametrize("version", [1, 2])
def test_a_wide_rank_beyond_the_count_is_refused(version):
    g, n = 80, 40  # C(80, 40) < 2**77: the largest 77-bit field is no rank
    wr = BitWriter()
    wr.write_ints([3, 2**77 - 1], 77)
    with pytest.raises(ValueError, match=r"a rank is >= C\(80, 40\)"):
        read_ranks(BitReader(wr.getvalue()), 2, g, n, version=version)


def test_version_1_wide_layer_round_trips_at_the_predicted_bits():
    # 64 filters of 1024 1x1 kernels, half kept: 64 ranks of ceil(log2 C(1024, 512)) = 1019 bits.
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 1024, 1, 1, generator=g)
    w = w * parse_structure("kernel-quota").mask(w, 0.5)
    out = encode_layer(w, "kernel-quota", "quota-rank", version=1)
    assert ceil_log2(math.comb(1024, 512)) == 1019
    assert out["bits"] == encode(w, "kernel-quota")["quota-rank"].total == 64 * (512 * 32 + 1019)
    assert layer_storage(w, "kernel-quota")["best"] == "quota-rank"
    counts = out["counts"]
    back = decode_layer(out["data"], w.shape, "kernel-quota", "quota-rank", counts, version=1)
    assert torch.equal(back, w)
    rd = BitReader(out["data"], out["bits"])
    rd.read(64 * 512, 32)
    kept = (w.reshape(64, 1024) != 0).numpy()
    assert rd.read_ints(64, 1019) == [colex_rank(np.flatnonzero(k)) for k in kept]


# -- files and sections of format version 1 -------------------------------------------------------


def test_version_1_file_reads_back_identically():
    # tests/data/compressed_v1.sgc: bitmap, group and quota-rank layers (ranks of 65, 77 and 111
    # bits among them), a float16 layer left dense, BN statistics; written before this code.
    # Layers i, j, k hold irregular masks (quota domains padded with empty groups).
    ref = load_file(DATA / "compressed_v1.safetensors")
    sd, meta = read_compressed(DATA / "compressed_v1.sgc")
    layers = [f"{name}.weight" for name in "abcdefghijk"]
    assert list(sd) == layers + ["a.bias", "bn.running_mean", "bn.num_batches_tracked"] + [
        "dense.weight"
    ]
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert sd[k].dtype == ref[k].dtype and sd[k].shape == ref[k].shape, k
        assert torch.equal(patterns(sd[k]), patterns(ref[k])), k
    encodings = {t["layer"]: t["encoding"] for t in meta["tensors"] if "encoding" in t}
    assert encodings == {
        "a": "bitmap",
        "b": "group",
        **{name: "quota-rank" for name in "cdefgh"},
        **{name: "bitmap" for name in "ijk"},
    }


def test_version_1_sections_are_written_and_read_bit_for_bit():
    ref = load_file(DATA / "compressed_v1.safetensors")
    # Every encoding of every layer of the file above at two bit widths; the section bytes are
    # tensors "000", "001", ... of compressed_v1_sections.safetensors.
    sections = json.loads((DATA / "compressed_v1_sections.json").read_text())
    blobs = load_file(DATA / "compressed_v1_sections.safetensors")
    assert len(sections) == len(blobs) == 94
    assert {s["encoding"] for s in sections} == {"bitmap", "csr", "group", "quota", "quota-rank"}
    padded = [s for s in sections if s["layer"] in "ijk" and s["encoding"] == "quota-rank"]
    assert [s["counts"]["levels"] for s in padded[::2]] == [
        [[5, 90, 49]],
        [[4, 6, 6], [24, 9, 8]],
        [[32, 9, 6]],
    ]
    for i, s in enumerate(sections):
        bits = BitWidths(value=s["value_bits"], index=s["index_bits"])
        w, data = ref[f"{s['layer']}.weight"], blobs[f"{i:03d}"].numpy().tobytes()
        out = encode_layer(w, s["structure"], s["encoding"], bits, version=1)
        assert out["data"] == data and out["bits"] == s["bits"], s["layer"]
        assert out["counts"] == s["counts"]
        assert out["bits"] == encode(w, s["structure"], bits)[s["encoding"]].total
        back = decode_layer(
            data, w.shape, s["structure"], s["encoding"], s["counts"], bits, version=1
        )
        want = w if bits.value == 32 else w.to(torch.float16).to(torch.float32)
        assert torch.equal(patterns(back), patterns(want)), (s["layer"], s["encoding"])


# -- wide ranks: windows of rows, many layers at once ----------------------------------------------


@pytest.mark.parametrize(
    "g,n", [(70, 35), (3000, 9), (3000, 2991), (257, 128), (600, 300), (1000, 40)]
)
def test_version_1_wide_ranks_of_stretched_windows(g, n):
    pos = stretched_subsets(g, n, np.random.default_rng(g * n))
    assert all(len(set(r.tolist())) == n for r in pos)
    width = ceil_log2(math.comb(g, n))
    assert width > 63  # the Python-integer path
    wr = BitWriter()
    write_ranks(wr, pos, g, n, version=1)
    assert BitReader(wr.getvalue(), wr.nbits).read_ints(len(pos), width) == [
        colex_rank(r) for r in pos
    ]
    back = read_ranks(BitReader(wr.getvalue(), wr.nbits), len(pos), g, n, version=1)
    assert torch.equal(back, torch.from_numpy(pos))


@pytest.mark.parametrize(
    "version,names,batches",
    [(1, ("_wide_ranks", "_wide_positions"), 3), (2, ("split_rank_words", "split_keep_words"), 1)],
)
def test_ranks_of_many_jobs_equal_ranks_job_by_job(monkeypatch, version, names, batches):
    # Version 1 ranks per (G, n), version 2 every wide job in one batch; C(40, 20) by the table.
    calls = []
    for name in names:
        real = getattr(ranks, name)
        monkeypatch.setattr(ranks, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    rng = np.random.default_rng(5)
    specs = [(80, 40), (300, 150), (80, 40), (40, 20), (300, 150), (300, 149), (80, 40)]
    pos = [stretched_subsets(g, n, rng)[: 3 + i] for i, (g, n) in enumerate(specs)]  # different D
    one = [BitWriter() for _ in specs]
    for wr, p, (g, n) in zip(one, pos, specs):
        wr.write([1], 1)  # off a byte boundary
        write_ranks(wr, p, g, n, version)
    many = [BitWriter() for _ in specs]
    for wr in many:
        wr.write([1], 1)
    calls.clear()
    write_ranks_many([(wr, p, g, n) for wr, p, (g, n) in zip(many, pos, specs)], version)
    assert calls == [names[0]] * batches
    assert [wr.getvalue() for wr in many] == [wr.getvalue() for wr in one]
    readers = [BitReader(wr.getvalue(), wr.nbits) for wr in one]
    for rd in readers:
        assert rd.read(1, 1).tolist() == [1]
    calls.clear()
    jobs = [(rd, len(p), g, n) for rd, p, (g, n) in zip(readers, pos, specs)]
    back = read_ranks_many(jobs, version)
    assert calls == [names[1]] * batches
    assert all(torch.equal(b, torch.from_numpy(p)) for b, p in zip(back, pos))
    assert all(rd.pos == rd.nbits for rd in readers)
    wr = BitWriter()
    wr.write_ints([math.comb(300, 150)], ceil_log2(math.comb(300, 150)))  # one past the last rank
    with pytest.raises(ValueError, match=r"a rank is >= C\(300, 150\)"):
        read_ranks_many([(BitReader(wr.getvalue()), 1, 300, 150)], version)


def test_layers_encoded_together_give_the_sections_of_one_at_a_time():
    g = torch.Generator().manual_seed(11)
    layers = []
    for shape, spec, sparsity in [
        ((16, 96, 1, 1), "kernel-quota", 0.5),  # C(96, 48): 92-bit ranks
        ((8, 96, 1, 1), "kernel-quota", 0.5),  # same (G, n), other D
        ((6, 96, 3, 3), "kernel-quota", 0.25),
        ((8, 70), "kernel-quota", 0.5),
        ((6, 80, 3, 3), "combined", 0.6),  # two levels
        ((4, 8, 3, 3), "window", 0.5),
    ]:
        w = torch.randn(shape, generator=g)
        layers.append((w * parse_structure(spec).mask(w, sparsity), spec, "quota-rank"))
    w = layers[0][0].clone()
    w[3] = 0  # a filter with no kept kernel: padded with its first empty groups
    layers.append((w, "kernel-quota", "quota-rank"))
    layers.append((layers[0][0], "kernel-quota", "group"))
    together = encode_layers(layers)
    for (w, spec, enc), out in zip(layers, together):
        assert out == encode_layer(w, spec, enc)
        assert out["bits"] == encode(w, spec)[enc].total
    assert together[-2]["counts"]["levels"] == [[16, 96, 48]]
    sections = [
        (out["data"], w.shape, spec, enc, out["counts"], torch.float32, out["bits"])
        for (w, spec, enc), out in zip(layers, together)
    ]
    for (w, _, _), back in zip(layers, decode_layers(sections)):
        assert torch.equal(back, w)


def test_value_codes_are_written_and_read_as_bytes():
    codes = np.array([0x3F800000, 0x80000001, 0, 0xFFFFFFFF], dtype=np.uint32)
    fast, slow = BitWriter(), BitWriter()
    fast.write(codes, 32)  # uint32 codes at a byte boundary: copied as bytes
    slow.write(codes.tolist(), 32)
    assert fast.getvalue() == slow.getvalue() == bytes.fromhex("3f8000008000000100000000ffffffff")
    fast.write([1], 1)
    fast.write(codes[:1], 32)  # off the boundary: through single bits
    assert fast.nbits == 4 * 32 + 1 + 32
    rd = BitReader(fast.getvalue(), fast.nbits)
    assert rd.read_codes(4, 32).tolist() == codes.tolist()
    assert rd.read_bits(1).tolist() == [1] and rd.read_codes(1, 32).tolist() == [0x3F800000]
    half = BitWriter()
    half.write(np.array([0x3C00, 1], dtype=np.uint16), 16)
    assert half.getvalue() == bytes.fromhex("3c000001")
    assert BitReader(half.getvalue()).read_codes(2, 16).dtype == np.uint16
