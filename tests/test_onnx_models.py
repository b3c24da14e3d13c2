"""ONNX export of the models users bring: several inputs (float and int64), several outputs
(tuples, dicts, Hugging Face ``ModelOutput``), tiny BERT and timm models, the dynamo exporter
with TorchScript as the fallback, every output checked by onnxruntime, and the one-line error
that leaves the old file in place."""

import importlib.util
import re

import pytest
import torch
import yaml
from conftest import first_step, tiny_recipe, train_cli
from torch import nn

from sparsegrain import cli
from sparsegrain.core.errors import ConfigError
from sparsegrain.deploy import onnx as sg_onnx
from sparsegrain.deploy.onnx import (
    ExportError,
    export_onnx,
    flatten_outputs,
    reason,
    rebuild_outputs,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOL = 1e-5  # max abs diff, onnxruntime vs PyTorch, for the hand-made modules
TOL_MODELS = 1e-4  # for the BERT and timm models (more ops, float32 reordering)


def run_file(path, feed: dict) -> list[torch.Tensor]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in sess.run(None, {k: v.numpy() for k, v in feed.items()})]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.a(h), self.b(h)


class FloatAndIds(nn.Module):
    """A float feature vector and int64 token ids (embedded and averaged)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 5)
        self.fc = nn.Linear(4 + 5, 3)

    def forward(self, x, ids):
        return self.fc(torch.cat([x, self.emb(ids).mean(1)], dim=1))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return {"logits": h, "aux": None, "parts": (h[:, :2] * 2, h.sum(1))}


class DataDependent(nn.Module):
    """A branch on a tensor's value: ``torch.export`` refuses it, the TorchScript tracer records
    the branch the example takes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y - 1


def test_output_names_and_rebuild():
    t = torch.zeros(1)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t, [t, t]))] == ["output_0", "output_1.0", "output_1.1"]
    out = {"logits": t, "loss": None, "hidden": (t, t), "d": {"x": t}}
    assert [n for n, _ in flatten_outputs(out)] == ["logits", "hidden.0", "hidden.1", "d.x"]
    values = [torch.full((1,), float(i)) for i in range(4)]
    back = rebuild_outputs(out, values)
    assert list(back) == ["logits", "hidden", "d"]  # None entries are left out
    assert back["hidden"][1].item() == 2.0 and back["d"]["x"].item() == 3.0
    with pytest.raises(ExportError, match=r"output 'output_1' is a int; ONNX outputs are tensors"):
        flatten_outputs((t, 3))
    with pytest.raises(ExportError, match="one name twice: a.0, a.0"):
        flatten_outputs({"a": (t,), "a.0": t})


def test_reason_is_one_line():
    err = RuntimeError(
        "\x1b[96mFailed\x1b[0m to export.\n\n## Exception summary\n\n<class 'X'>: bad op\nmore"
    )
    assert reason(err) == "RuntimeError: <class 'X'>: bad op"
    assert reason(ValueError("a\nb")) == "ValueError: a"
    assert len(reason(ValueError("x" * 1000))) == 300


def test_two_outputs(tmp_path):
    torch.manual_seed(0)
    m = TwoHeads()
    x = torch.randn(4, 6)
    res = export_onnx(m, x, tmp_path / "two.onnx")
    assert res["exporter"] == "dynamo" and res["fallback"] is None
    assert res["input_names"] == ["input"]
    assert res["output_names"] == ["output_0", "output_1"]
    assert set(res["diffs"]) == {"output_0", "output_1"}
    assert res["max_abs_diff"] == max(res["diffs"].values()) < TOL
    a, b = res["outputs"]  # onnxruntime's results, as the model's tuple
    with torch.no_grad():
        ra, rb = m(x)
    assert a.shape == (4, 3) and b.shape == (4, 2)
    assert max_diff(a, ra) < TOL and max_diff(b, rb) < TOL
    shape = res["input_shapes"]["input"]
    assert isinstance(shape[0], str) and shape[1:] == [6]  # the batch axis is symbolic
    x3 = torch.randn(3, 6)
    got = run_file(tmp_path / "two.onnx", {"input": x3})
    with torch.no_grad():
        want = m(x3)
    assert [g.shape for g in got] == [(3, 3), (3, 2)]
    assert max(max_diff(g, w) for g, w in zip(got, want, strict=True)) < TOL
    assert res["bytes"] == (tmp_path / "two.onnx").stat().st_size


def test_two_inputs_one_of_int64_ids(tmp_path):
    torch.manual_seed(0)
    m = FloatAndIds()
    x, ids = torch.randn(2, 4), torch.randint(0, 20, (2, 7))
    res = export_onnx(m, (x, ids), tmp_path / "two_in.onnx")
    assert res["exporter"] == "dynamo"
    assert res["input_names"] == ["input_0", "input_1"]
    assert res["output_names"] == ["output"]
    assert res["max_abs_diff"] < TOL
    import onnx

    proto = onnx.load(str(tmp_path / "two_in.onnx"))
    types = [i.type.tensor_type.elem_type for i in proto.graph.input]
    assert types == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    x5, ids5 = torch.randn(5, 4), torch.randint(0, 20, (5, 7))
    (y,) = run_file(tmp_path / "two_in.onnx", {"input_0": x5, "input_1": ids5})
    with torch.no_grad():
        assert y.shape == (5, 3) and max_diff(y, m(x5, ids5)) < TOL


def test_dict_output(tmp_path):
    torch.manual_seed(0)
    m = DictOut()
    x = torch.randn(3, 4)
    res = export_onnx(m, x, tmp_path / "dict.onnx")
    assert res["exporter"] == "dynamo"
    assert res["output_names"] == ["logits", "parts.0", "parts.1"]
    assert res["max_abs_diff"] < TOL
    out = res["outputs"]
    assert list(out) == ["logits", "parts"] and out["parts"][1].shape == (3,)
    with torch.no_grad():
        want = m(x)
    assert max_diff(out["parts"][0], want["parts"][0]) < TOL
    import onnx

    assert [o.name for o in onnx.load(str(tmp_path / "dict.onnx")).graph.output] == [
        "logits",
        "parts.0",
        "parts.1",
    ]


def test_fallback_to_torchscript_when_dynamo_raises(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("dynamo is out\nsecond line")

    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", refuse)
    torch.manual_seed(0)
    m = TwoHeads()
    x = torch.randn(4, 6)
    res = export_onnx(m, x, tmp_path / "ts.onnx")
    assert res["exporter"] == "torchscript"
    assert res["fallback"] == "RuntimeError: dynamo is out"
    assert res["output_names"] == ["output_0", "output_1"] and res["max_abs_diff"] < TOL
    assert res["input_shapes"] == {"input": ["batch", 6]}
    got = run_file(tmp_path / "ts.onnx", {"input": torch.randn(2, 6)})
    assert [g.shape for g in got] == [(2, 3), (2, 2)]


def test_fallback_when_onnxruntime_cannot_run_the_dynamo_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", lambda *a, **k: b"not an onnx model")
    torch.manual_seed(0)
    res = export_onnx(DictOut(), torch.randn(3, 4), tmp_path / "d.onnx")
    assert res["exporter"] == "torchscript"
    assert res["fallback"].startswith("InvalidProtobuf: ")
    assert res["output_names"] == ["logits", "parts.0", "parts.1"] and res["max_abs_diff"] < TOL


def test_a_model_torch_export_refuses_falls_back(tmp_path):
    torch.manual_seed(0)
    m = DataDependent()
    x = torch.randn(3, 4)
    res = export_onnx(m, x, tmp_path / "dd.onnx")
    assert res["exporter"] == "torchscript"
    assert "GuardOnDataDependentSymNode" in res["fallback"] and "\n" not in res["fallback"]
    assert res["max_abs_diff"] < TOL


def test_both_exporters_failing_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", lambda *a, **k: b"garbage")

    def refuse(*args, **kwargs):
        raise RuntimeError("no tracer today")

    monkeypatch.setitem(sg_onnx._WRITERS, "torchscript", refuse)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the old model")
    with pytest.raises(ExportError) as e:
        export_onnx(TwoHeads(), torch.randn(2, 6), out)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("ONNX export of TwoHeads failed (dynamo: InvalidProtobuf: ")
    assert msg.endswith("; torchscript: RuntimeError: no tracer today); nothing written")
    assert out.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_only_the_exporter_asked_for(tmp_path, monkeypatch):
    res = export_onnx(TwoHeads(), torch.randn(2, 6), tmp_path / "t.onnx", exporter="torchscript")
    assert res["exporter"] == "torchscript" and res["fallback"] is None
    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", lambda *a, **k: b"garbage")
    with pytest.raises(ExportError, match=r"\(dynamo: InvalidProtobuf: .*\); nothing written$"):
        export_onnx(TwoHeads(), torch.randn(2, 6), tmp_path / "d.onnx", exporter="dynamo")
    assert not (tmp_path / "d.onnx").exists()


def test_opset_is_passed_and_recorded(tmp_path):
    res = export_onnx(TwoHeads(), torch.randn(2, 6), tmp_path / "o.onnx", exporter="torchscript",
                      opset=17)  # fmt: skip
    assert res["opset"] == 17
    assert export_onnx(TwoHeads(), torch.randn(2, 6), tmp_path / "p.onnx")["opset"] == 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exporter": "jit"}, "exporter: 'jit' is not one of dynamo, torchscript"),
        ({"opset": 3}, "opset: an ONNX opset version (an integer >= 7) or None, got 3"),
        ({"opset": "17"}, "got '17'"),
        ({"example": [torch.zeros(1, 6), 2]}, "example input 'input_1': a tensor, got int"),
        ({"example": ()}, "example input: empty"),
        ({"example": 3.0}, "example input: a tensor, a tuple/list of tensors or a dict"),
        ({"reference": {"x": torch.zeros(1)}}, "reference outputs x do not match"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, kwargs, message):
    example = kwargs.pop("example", torch.zeros(1, 6))
    with pytest.raises(ConfigError) as e:
        export_onnx(TwoHeads(), example, tmp_path / "x.onnx", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists()


def test_non_tensor_output_is_refused(tmp_path):
    class Counts(nn.Module):
        def forward(self, x):
            return x * 2, "done"

    with pytest.raises(ExportError, match="output 'output_1' is a str"):
        export_onnx(Counts(), torch.zeros(2, 3), tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()


# ---- models users bring ---------------------------------------------------------------------


def _have(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def tiny_bert(**config):
    from sparsegrain.models.external import import_transformers

    tr = import_transformers()
    cfg = tr.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
        **config,
    )
    torch.manual_seed(0)
    return tr.BertForSequenceClassification(cfg).eval()


def token_batch(batch=2, seq=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, 5:] = 0  # padding in the last sequence
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.slow
@pytest.mark.skipif(not _have("transformers"), reason="transformers is not installed")
def test_tiny_bert_keyword_int64_inputs(tmp_path):
    bert = tiny_bert()
    batch = token_batch()
    res = export_onnx(bert, batch, tmp_path / "bert.onnx")
    assert res["exporter"] == "dynamo" and res["fallback"] is None
    assert res["input_names"] == ["input_ids", "attention_mask"]
    assert res["output_names"] == ["logits"]  # the ModelOutput's one entry without labels
    assert res["max_abs_diff"] < TOL_MODELS
    assert res["outputs"]["logits"].shape == (2, 3)
    other = token_batch(batch=3)
    (logits,) = run_file(tmp_path / "bert.onnx", other)
    with torch.no_grad():
        want = bert(**other).logits
    assert logits.shape == (3, 3) and max_diff(logits, want) < TOL_MODELS


@pytest.mark.slow
@pytest.mark.skipif(not _have("transformers"), reason="transformers is not installed")
def test_tiny_bert_hidden_states_every_output_checked(tmp_path):
    bert = tiny_bert(output_hidden_states=True)
    res = export_onnx(bert, token_batch(), tmp_path / "bert_h.onnx")
    names = ["logits", "hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert res["exporter"] == "dynamo" and res["output_names"] == names
    assert set(res["diffs"]) == set(names) and res["max_abs_diff"] < TOL_MODELS
    assert [t.shape for t in res["outputs"]["hidden_states"]] == [(2, 8, 32)] * 3


@pytest.mark.skipif(not _have("transformers"), reason="transformers is not installed")
def test_tiny_bert_through_torchscript(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", refuse)
    res = export_onnx(tiny_bert(), token_batch(), tmp_path / "bert_ts.onnx")
    assert (
        res["exporter"] == "torchscript" and res["fallback"] == "RuntimeError: dynamo unavailable"
    )
    assert res["output_names"] == ["logits"] and res["max_abs_diff"] < TOL_MODELS


@pytest.mark.slow
@pytest.mark.skipif(not _have("timm"), reason="timm is not installed")
def test_timm_resnet10t(tmp_path):
    from sparsegrain.models.external import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    res = export_onnx(net, x, tmp_path / "r10t.onnx")
    assert res["exporter"] == "dynamo" and res["output_names"] == ["output"]
    assert res["max_abs_diff"] < TOL_MODELS and res["outputs"].shape == (2, 5)
    n_params = sum(p.numel() for p in net.parameters())
    assert res["bytes"] > 4 * n_params  # float32 weights are in the file itself


@pytest.mark.slow
@pytest.mark.skipif(not _have("torchvision"), reason="torchvision is not installed")
def test_torchvision_mobilenet_v2(tmp_path):
    from sparsegrain.models.external import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    net = tv.models.mobilenet_v2(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    res = export_onnx(net, x, tmp_path / "mb2.onnx")
    assert res["exporter"] == "dynamo" and res["max_abs_diff"] < TOL_MODELS
    assert res["outputs"].shape == (2, 4)


# ---- sparsegrain export --format onnx ----------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_run")
    recipe = tiny_recipe(first_step(), epochs=1, seed=0, train_size=128, test_size=64)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert train_cli("--recipe", root / "recipe.yaml", "--out", root / "run") == 0
    return root / "run"


def test_export_run_records_the_exporter(run, tmp_path, capsys):
    from sparsegrain.deploy.export import export_run

    rec = export_run(run, tmp_path / "m.onnx", fmt="onnx", log=lambda s: None)
    o = rec["onnx"]
    assert o["exporter"] == "dynamo" and o["fallback"] is None and o["opset"] == 20
    assert o["input_names"] == ["input"] and o["output_names"] == ["output"]
    assert o["input_shapes"]["input"][1:] == [1, 12, 12]
    assert rec["checks"]["onnxruntime vs masked model"] < TOL


def test_cli_says_torchscript_and_why(run, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("dynamo is off")

    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", refuse)
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--run", str(run), "--out", str(out), "--format", "onnx"]) == 0
    text = capsys.readouterr().out
    assert "exporter: torchscript (dynamo failed: RuntimeError: dynamo is off), opset 20" in text
    diff = float(re.search(r"check: onnxruntime vs masked model: max abs diff (\S+)", text)[1])
    assert diff < TOL


def test_cli_export_failure_is_one_line_and_keeps_the_file(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sg_onnx._WRITERS, "dynamo", lambda *a, **k: b"garbage")
    monkeypatch.setitem(sg_onnx._WRITERS, "torchscript", lambda *a, **k: b"garbage")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"kept")
    assert cli.main(["export", "--run", str(run), "--out", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ONNX export of " in err and "nothing written" in err
    assert out.read_bytes() == b"kept"
