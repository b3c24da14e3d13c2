"""``sparsegrain export`` on a tiny run made here: safetensors (plain and compacted), ONNX checked
with onnxruntime, the compressed format, and the one-line errors."""

import importlib.util
import re

import pytest
import torch
import yaml
from conftest import first_step, tiny_recipe, train_cli

from sparsegrain import cli
from sparsegrain.core.io import load_tensors
from sparsegrain.deploy.compact import compact, load_compact
from sparsegrain.deploy.export import export_onnx, load_run
from sparsegrain.models import create_model

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnx") is not None
)
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed (onnx extra)")

RECIPE = tiny_recipe(
    first_step(),
    epochs=1,
    seed=0,
    train_size=128,
    test_size=64,
    test_batch=64,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    assert train_cli("--recipe", root / "recipe.yaml", "--out", root / "run") == 0
    return root / "run"


def export(*args) -> int:
    return cli.main(["export", *map(str, args)])


def diffs(text: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r"check: (.+?): max abs diff (\S+)", text)}


def masked(run):
    model, _, x, _ = load_run(run)
    with torch.no_grad():
        return model, x, model(x)


def test_export_compacted_safetensors(run, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert export("--run", run, "--out", out, "--compact") == 0
    text = capsys.readouterr().out
    checks = diffs(text)
    assert set(checks) == {"compacted vs masked model", "file read back vs masked model"}
    assert all(d <= 1e-5 for d in checks.values())
    assert f"wrote {out}" in text and "bytes" in text
    model, x, ref = masked(run)
    back, meta = load_compact(out)
    assert meta["model"] == {"name": "resnet_tiny", "num_classes": 10, "in_channels": 1}
    n_back = sum(p.numel() for p in back.parameters())
    assert n_back == meta["params"]["after"] < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert float((back(x) - ref).abs().max()) <= 1e-5


def test_export_plain_safetensors(run, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert export("--run", run, "--out", out) == 0
    assert diffs(capsys.readouterr().out) == {"file read back vs masked model": 0.0}
    a, meta = load_tensors(out)
    b, _ = load_tensors(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["model"]["name"] == "resnet_tiny"


def test_export_compacted_folded_channels_last(run, tmp_path, capsys):
    out = tmp_path / "f.safetensors"
    args = ["--run", run, "--out", out, "--compact", "--fold-bn", "--channels-last"]
    assert export(*args) == 0
    checks = diffs(capsys.readouterr().out)
    assert all(d <= 1e-5 for d in checks.values()) and len(checks) == 2
    back, meta = load_compact(out)
    assert meta["channels_last"] is True and "bn1" in meta["folded"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in back.modules())
    model, x, ref = masked(run)
    with torch.no_grad():
        assert float((back(x) - ref).abs().max()) <= 1e-5


@needs_ort
@pytest.mark.parametrize("flags", [[], ["--compact"], ["--compact", "--fold-bn"]])
def test_export_onnx(run, tmp_path, capsys, flags):
    import onnxruntime

    out = tmp_path / "m.onnx"
    assert export("--run", run, "--out", out, "--format", "onnx", *flags) == 0
    checks = diffs(capsys.readouterr().out)
    assert checks["onnxruntime vs masked model"] <= 1e-5
    model, x, _ = masked(run)
    x3 = torch.randn(3, *x.shape[1:])  # another batch size: the batch axis is dynamic
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        assert float((torch.from_numpy(y) - model(x3)).abs().max()) <= 1e-5


@needs_ort
def test_onnx_round_trip_of_a_compacted_vgg(tmp_path):
    torch.manual_seed(0)
    m = create_model("vgg_tiny", num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        m.features[4].weight[:3] = 0
        m.features[8].bias[:2] = 0.3
        m.features[7].weight[:2] = 0
    x = torch.randn(2, 3, 12, 12)
    r = compact(m, x)
    res = export_onnx(r.model, x, tmp_path / "v.onnx")
    with torch.no_grad():
        assert float((res["outputs"] - m(x)).abs().max()) <= 1e-5
    assert res["bytes"] == (tmp_path / "v.onnx").stat().st_size > 0


def test_export_compressed(run, tmp_path, capsys):
    out = tmp_path / "m.sgc"
    assert export("--run", run, "--out", out, "--format", "compressed") == 0
    printed = capsys.readouterr().out
    checks = diffs(printed)
    assert checks == {"read back vs masked model": 0.0}
    from sparsegrain.deploy.compressed import read_compressed

    size = out.stat().st_size
    predicted = int(re.search(r"predicted: ([\d,]+) bytes", printed)[1].replace(",", ""))
    sections = len(read_compressed(out)[1]["tensors"])
    assert 0 <= size - predicted <= sections  # each section pads to a byte, nothing else differs
    state, _ = read_compressed(out)
    b, _ = load_tensors(run / "model.safetensors")
    assert state.keys() == b.keys()


def test_onnx_missing_is_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert export("--run", run, "--out", tmp_path / "x.onnx", "--format", "onnx") == 2
    assert "pip install 'sparsegrain[onnx]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compact", "--format", "compressed"], "exclude each other"),
        (["--bits", "16"], "--bits applies to --format compressed only"),
    ],
)
def test_bad_flags(run, tmp_path, capsys, args, message):
    assert export("--run", run, "--out", tmp_path / "x", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_not_a_run(tmp_path, capsys):
    assert export("--run", tmp_path, "--out", tmp_path / "x") == 2
    assert "no recipe.yaml" in capsys.readouterr().err
