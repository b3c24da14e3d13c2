"""Compressed file format: bit I/O, every encoding bit-exact at storage.py's bit count, files."""

import importlib.util
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

import sparsegrain
from sparsegrain.analysis.counting import ceil_log2
from sparsegrain.analysis.storage import BitWidths, encode
from sparsegrain.core.errors import ConfigError
from sparsegrain.deploy.compressed import (
    MAGIC,
    BitReader,
    BitWriter,
    decode_layer,
    encode_layer,
    read_compressed,
    write_compressed,
)
from sparsegrain.models import create_model
from sparsegrain.models.external import import_torchvision
from sparsegrain.structures import parse_structure

CONV = (8, 4, 3, 3)  # C*R*S = 36: fits nm:2:4 and block:2x2; R*S = 9 for window and combined
LINEAR = (8, 16)
CONV_SPECS = ["fine", "vector", "kernel", "filter", "channel", "shape", "window"]
CONV_SPECS += ["kernel-quota", "combined", "nm:2:4", "block:2x2"]
LINEAR_SPECS = ["fine", "kernel", "filter", "channel", "shape", "kernel-quota", "nm:2:4"]
LINEAR_SPECS += ["block:2x2"]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of a float32 tensor, with -0.0 as +0.0 (the format does not keep a zero's
    sign)."""
    t = torch.where(t == 0, torch.zeros_like(t), t).to(torch.float32)
    return t.view(torch.int32)


def weight(shape, spec, sparsity, seed, conforming=True):
    """A weight with exact zeros: the structure's own mask, or an irregular fine mask; with a
    -0.0 at a pruned place and odd values (inf, nan, subnormal) among the kept ones."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if conforming:
        mask = parse_structure(spec).mask(w, sparsity)
    else:
        mask = torch.rand(shape, generator=g) >= sparsity
    w = w * mask
    flat, kept = w.reshape(-1), mask.reshape(-1).nonzero().reshape(-1)
    odd = [float("inf"), float("nan"), 1e-42, -3.5]
    flat[kept[: len(odd)]] = torch.tensor(odd[: len(kept)])
    flat[(~mask.reshape(-1)).nonzero().reshape(-1)[:1]] = -0.0
    return w


# -- bits -----------------------------------------------------------------------------------------


def test_bit_writer_layout_is_msb_first_and_zero_padded():
    wr = BitWriter()
    wr.write([5], 3)  # 101
    wr.write([1], 1)  # 1
    wr.write_int(2, 2)  # 10
    assert wr.nbits == 6 and wr.getvalue() == bytes([0b10111000])
    wr.write(np.array([0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64), 64)
    assert wr.nbits == 70 and len(wr.getvalue()) == 9
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        wr.write([8], 3)
    with pytest.raises(ValueError, match="does not fit"):
        wr.write_int(4, 2)


fields = hs.integers(0, 64).flatmap(
    lambda w: hs.tuples(hs.just(w), hs.lists(hs.integers(0, 2**w - 1), max_size=20))
)
big = hs.integers(0, 300).flatmap(lambda w: hs.tuples(hs.just(-w), hs.integers(0, 2**w - 1)))


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.one_of(fields, big), max_size=12))
def test_bit_writer_reader_round_trip(ops):
    wr = BitWriter()
    for width, vals in ops:
        if width > 0 or isinstance(vals, list):
            wr.write(np.array(vals, dtype=np.uint64), width)
        else:
            wr.write_int(vals, -width)
    data = wr.getvalue()
    total = sum(w * len(v) if isinstance(v, list) else -w for w, v in ops)
    assert wr.nbits == total and len(data) == -(-total // 8)
    rd = BitReader(data, total)
    for width, vals in ops:
        if width > 0 or isinstance(vals, list):
            assert rd.read(len(vals), width).tolist() == vals
        else:
            assert rd.read_int(-width) == vals
    assert rd.pos == total
    with pytest.raises(EOFError):
        rd.read(1, 1)


# -- every encoding -------------------------------------------------------------------------------


def test_csr_section_bytes_by_hand():
    w = torch.zeros(1, 40)
    w[0, 2], w[0, 20] = 1.0, -2.0  # gaps 2, 18 -> a filler (gap 15) and then 3
    out = encode_layer(w, "fine", "csr")
    # values 1.0, 0 (filler), -2.0 as float32; gaps 2, 15, 3 in 4 bits each (+ 4 padding bits)
    assert out["bits"] == 3 * 36 and out["counts"] == {
        "entries": 3,
        "fillers": 1,
        "addressing": "relative",
    }
    assert out["data"] == bytes.fromhex("3f80000000000000c00000002f30")


@pytest.mark.parametrize(
    "shape,spec",
    [(CONV, s) for s in CONV_SPECS] + [(LINEAR, s) for s in LINEAR_SPECS],
)
@pytest.mark.parametrize("conforming", [True, False])
def test_every_encoding_round_trips_at_the_predicted_bit_count(shape, spec, conforming):
    st = parse_structure(spec)
    sparsity = 0.5 if st.name == "nm" else 0.7
    for seed in range(3):
        w = weight(shape, spec, sparsity, seed, conforming)
        for bits in (BitWidths(), BitWidths(index=2), BitWidths(index=1)):
            costs = encode(w, st, bits)
            for name, cost in costs.items():
                out = encode_layer(w, st, name, bits)
                assert out["bits"] == cost.total, (name, bits)
                assert len(out["data"]) == -(-cost.total // 8)
                back = decode_layer(
                    out["data"], shape, st, name, out["counts"], bits, nbits=out["bits"]
                )
                assert torch.equal(bits_of(back), bits_of(w)), name


@settings(max_examples=40, deadline=None)
@given(
    hs.lists(hs.booleans(), min_size=1, max_size=200),
    hs.integers(1, 6),
    hs.sampled_from([16, 32]),
)
def test_fine_encodings_round_trip_any_mask(mask, index_bits, value_bits):
    mask = torch.tensor(mask + [False]).reshape(1, -1)  # at least 2 elements for "fine"
    w = torch.arange(1, mask.numel() + 1, dtype=torch.float32).reshape(mask.shape) * mask
    bits = BitWidths(value=value_bits, index=index_bits)
    for name, cost in encode(w, "fine", bits).items():
        out = encode_layer(w, "fine", name, bits)
        assert out["bits"] == cost.total
        back = decode_layer(out["data"], w.shape, "fine", name, out["counts"], bits)
        assert torch.equal(back, w)  # small integers are exact in float16 too


def test_group_relative_addressing_with_fillers():
    w = torch.zeros(2, 200)  # "shape": one group per column, E = 2
    w[:, 5], w[1, 100], w[0, 199] = 1.0, 2.0, 3.0  # gaps 5, 95, 99: one filler (gap 63) each
    bits = BitWidths(index=6)
    cost = encode(w, "shape", bits)["group"]
    assert (cost.addressing, cost.fillers) == ("relative", 2)
    out = encode_layer(w, "shape", "group", bits)
    assert out["counts"] == {"entries": 5, "fillers": 2, "addressing": "relative"}
    assert out["bits"] == cost.total == 5 * 6 + 5 * 2 * 32
    assert torch.equal(decode_layer(out["data"], w.shape, "shape", "group", out["counts"], bits), w)


def test_quota_rank_is_the_colex_rank():
    # The 6 rows are the 2-of-4 subsets in colex order: {0,1} {0,2} {1,2} {0,3} {1,3} {2,3}.
    subsets = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    w = torch.zeros(6, 4)
    for i, s in enumerate(subsets):
        w[i, list(s)] = 1.0
    out = encode_layer(w, "nm:2:4", "quota-rank")
    rd = BitReader(out["data"], out["bits"])
    rd.read(12, 32)
    assert rd.read(6, 3).tolist() == [0, 1, 2, 3, 4, 5]  # ceil(log2 6) = 3 bits each


def test_wide_ranks_use_python_integers():
    # C(80, 40) needs 77 bits per filter: beyond 64-bit fields.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 80, generator=g)
    w = w * parse_structure("kernel-quota").mask(w, 0.5)
    out = encode_layer(w, "kernel-quota", "quota-rank")
    assert out["bits"] == encode(w, "kernel-quota")["quota-rank"].total
    assert out["bits"] == 3 * 40 * 32 + 3 * math.ceil(math.log2(math.comb(80, 40)))
    back = decode_layer(out["data"], w.shape, "kernel-quota", "quota-rank", out["counts"])
    assert torch.equal(back, w)


def test_float16_values_are_lossy_and_half_the_value_bits():
    w = torch.tensor([[0.1, 0.0, 1e5, 0.0, 1e-9, 2.0]])
    out = encode_layer(w, "fine", "bitmap", BitWidths(value=16))
    assert out["bits"] == 6 + 4 * 16
    back = decode_layer(out["data"], w.shape, "fine", "bitmap", out["counts"], BitWidths(value=16))
    assert torch.equal(back, w.to(torch.float16).to(torch.float32))
    assert back[0, 2] == float("inf") and back[0, 4] == 0 and back[0, 0] != w[0, 0]


# -- files ----------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv3(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def test_mixed_model_round_trip(tmp_path):
    torch.manual_seed(0)
    net = Net()
    structures = {"conv1": None, "conv2": "combined", "conv3": "nm:2:4", "fc": "block:2x2"}
    with torch.no_grad():
        for name, spec in structures.items():
            if spec is not None:
                m = net.get_submodule(name)
                m.weight.mul_(parse_structure(spec).mask(m.weight, 0.75))
        net.bn1.running_mean.uniform_()
    net.bn1.num_batches_tracked += 7
    out = write_compressed(net, structures, tmp_path / "net.sgc", BitWidths(index=3))
    assert [r["name"] for r in out["layers"]] == ["conv2", "conv3", "fc"]
    for r in out["layers"]:
        assert r["written_bits"] == r["predicted_bits"], r
    assert out["file_bytes"] == (tmp_path / "net.sgc").stat().st_size
    sd, meta = read_compressed(tmp_path / "net.sgc")
    ref = net.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert sd[k].dtype == ref[k].dtype and torch.equal(sd[k], ref[k]), k
    assert meta["format"] == "sparsegrain-compressed" and meta["bits"] == {"value": 32, "index": 3}
    entry = {t["name"]: t for t in meta["tensors"]}["conv3.weight"]
    assert entry["structure"] == "nm:2:4" and entry["encoding"] in ("quota", "quota-rank")
    fresh = Net()
    fresh.load_state_dict(sd)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_resnet20_fine_90_file_matches_the_storage_estimate(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    sp = sparsegrain.sparsify_(
        model, {"method": "oneshot", "structure": "fine", "target": 0.9}, steps_per_epoch=1
    )
    sp.finalize()
    structures = {
        r["name"]: (None if r["structure"] == "dense" else r["structure"]) for r in sp.report()
    }
    out = write_compressed(model, structures, tmp_path / "r20.sgc")
    size = (tmp_path / "r20.sgc").stat().st_size
    assert size == out["file_bytes"]
    assert all(r["written_bits"] == r["predicted_bits"] for r in out["layers"])
    # 18 block convs + 2 shortcut convs; conv1 and fc left dense by default
    assert len(out["layers"]) == 20 and structures["conv1"] is None and structures["fc"] is None
    # predicted = sparse layers at their best encoding + raw tensors + header
    assert abs(out["ratio"] - 1) < 0.05
    assert out["ratio_to_storage"] < 1.05  # even with the header not predicted
    sd, _ = read_compressed(tmp_path / "r20.sgc")
    ref = model.state_dict()
    for k in ref:
        if ref[k].is_floating_point():
            assert torch.equal(bits_of(sd[k]), bits_of(ref[k])), k
        else:
            assert torch.equal(sd[k], ref[k]), k


def test_state_dict_and_parameter_names_are_accepted(tmp_path):
    w = torch.zeros(4, 8)
    w[1, 3] = 2.0
    sd = {"a.weight": w, "b": torch.ones(3)}
    out = write_compressed(sd, {"a.weight": "fine", "b": None}, tmp_path / "f.sgc")
    assert out["layers"][0]["name"] == "a.weight"
    back, _ = read_compressed(tmp_path / "f.sgc")
    assert torch.equal(back["a.weight"], w) and torch.equal(back["b"], sd["b"])


def test_bad_inputs_are_refused(tmp_path):
    net = Net()
    with pytest.raises(ConfigError, match="did you mean 'conv2'"):
        write_compressed(net, {"conv_2": "fine"}, tmp_path / "x")
    with pytest.raises(ValueError, match="layer 'conv3'.*window needs"):
        write_compressed(net, {"conv3": "window"}, tmp_path / "x")
    with pytest.raises(ValueError, match="bits.value must be 32"):
        write_compressed(net, {}, tmp_path / "x", BitWidths(value=8))
    sparsegrain.sparsify_(
        net, {"method": "oneshot", "structure": "fine", "target": 0.5}, steps_per_epoch=1
    )
    with pytest.raises(ValueError, match="finalize"):
        write_compressed(net, {"conv2": "fine"}, tmp_path / "x")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def good_file(tmp_path):
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.conv2.weight.mul_(parse_structure("fine").mask(net.conv2.weight, 0.8))
    path = tmp_path / "good.sgc"
    write_compressed(net, {"conv2": "fine"}, path)
    return path


def _header(path):
    blob = path.read_bytes()
    (size,) = struct.unpack("<I", blob[8:12])
    return json.loads(zlib.decompress(blob[12 : 12 + size])), blob[12 + size :]


def _rewrite(path, header, payload):
    head = zlib.compress(json.dumps(header).encode())
    path.write_bytes(MAGIC + struct.pack("<I", len(head)) + head + payload)


def test_overwrite_is_atomic_and_leaves_no_temporary(good_file):
    write_compressed({"x": torch.ones(2)}, {}, good_file)
    assert [p.name for p in good_file.parent.iterdir()] == ["good.sgc"]
    assert list(read_compressed(good_file)[0]) == ["x"]


def test_missing_foreign_truncated_and_corrupt_files(good_file, tmp_path):
    def fails(path, match):
        with pytest.raises(ConfigError, match=match) as info:
            read_compressed(path)
        assert str(path) in str(info.value)

    fails(tmp_path / "nope.sgc", "not found")
    blob = good_file.read_bytes()
    bad = tmp_path / "bad.sgc"
    for data, match in [
        (b"", "not a sparsegrain compressed file"),
        (b"PK\x03\x04" + blob[4:], "not a sparsegrain compressed file"),
        (blob[:10], "not a sparsegrain compressed file"),
        (blob[:40], "truncated"),
        (blob[:-1], "truncated"),
        (blob + b"\0", "padded"),
        (blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:], "corrupt header"),
        (blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:], "checksum"),
    ]:
        bad.write_bytes(data)
        fails(bad, match)
    header, payload = _header(good_file)
    header["version"] = 99
    _rewrite(bad, header, payload)
    fails(bad, "version 99")
    header, payload = _header(good_file)
    entry = next(t for t in header["tensors"] if "encoding" in t)
    counts = entry["counts"]  # a checksum-valid file whose header lies about a count
    counts["values" if "values" in counts else "entries"] += 1
    _rewrite(bad, header, payload)
    fails(bad, "corrupt")
    header, payload = _header(good_file)
    header["tensors"][0]["dtype"] = "object"
    _rewrite(bad, header, payload)
    fails(bad, "corrupt.*unknown dtype")


def test_reading_maps_the_file_and_lets_it_go(tmp_path):
    # read_compressed memory-maps the file; the map is closed before it returns, so no mapping
    # of the file is left (Linux: /proc/self/maps), and an empty file, which cannot be mapped,
    # is named in one line.
    path = tmp_path / "m.sgc"
    w = torch.randn(16, 32, 3, 3)
    write_compressed({"conv.weight": w * parse_structure("kernel-quota").mask(w, 0.5)},
                     {"conv": "kernel-quota"}, path)  # fmt: skip
    back, _ = read_compressed(path)
    assert back["conv.weight"].count_nonzero() == 16 * 16 * 9
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
    empty = tmp_path / "empty.sgc"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="is not a sparsegrain compressed file"):
        read_compressed(empty)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)
def test_files_of_torchvision_convnext_and_vit_read_back_at_the_predicted_bits(tmp_path):
    # The families whose files once took minutes: a ConvNeXt (depthwise 7x7 convs, linears of
    # 48 and 192 inputs) and a ViT whose MLP reads 3072 features (split ranks of 3067 bits,
    # root 2048 + 1024 groups). Every conv and linear but the first and the classifier gets a
    # kernel-quota 50% mask, depthwise convs (one kernel per filter) stay dense.
    tv = import_torchvision()  # before any torchvision submodule (its operator workaround)
    CNBlockConfig, ConvNeXt = tv.models.convnext.CNBlockConfig, tv.models.ConvNeXt
    VisionTransformer = tv.models.VisionTransformer
    torch.manual_seed(0)
    convnext = ConvNeXt([CNBlockConfig(24, 48, 1), CNBlockConfig(48, None, 1)], num_classes=10)
    vit = VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=3072)
    st = parse_structure("kernel-quota")
    for name, model in [("convnext", convnext), ("vit", vit)]:
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        structures = {}
        with torch.no_grad():
            for layer, m in layers[1:-1]:
                if m.weight.shape[1] > 1:
                    m.weight.mul_(st.mask(m.weight, 0.5))
                    structures[layer] = "kernel-quota"
        out = write_compressed(model, structures, tmp_path / f"{name}.sgc")
        assert [r["name"] for r in out["layers"]] == list(structures)
        assert all(r["encoding"] == "quota-rank" for r in out["layers"])
        assert all(r["written_bits"] == r["predicted_bits"] for r in out["layers"])
        sd, _ = read_compressed(tmp_path / f"{name}.sgc")
        ref = model.state_dict()
        assert list(sd) == list(ref)
        assert all(torch.equal(bits_of(sd[k]), bits_of(ref[k])) for k in ref)
    wide = {r["name"]: r for r in out["layers"]}["encoder.layers.encoder_layer_0.mlp.3"]
    # 32 rows keep 1536 of 3072 weights: their values, then one rank each
    assert wide["written_bits"] == 32 * (1536 * 32 + ceil_log2(math.comb(3072, 1536)))
    assert len(structures) == 3  # out_proj and the two MLP linears (in_proj is no module)
