"""ONNX files of any ``nn.Module``: one or several inputs (float or integer tensors, positional
or keyword), one or several outputs (a tensor, tuples, lists, dicts, Hugging Face
``ModelOutput``), written only once onnxruntime has run them and every output was compared
with the PyTorch model's.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` and onnxscript); where
it fails, or onnxruntime cannot run what it made, the TorchScript exporter is tried and the
reason dynamo failed is kept in the result.

Names, in the order of the ONNX graph:

- inputs: a tensor example is the one input ``input`` (``model(x)``); a tuple or list is
  ``input_0``, ``input_1``, ... (``model(*xs)``); a dict is its keys, passed as keyword
  arguments (``model(**kw)``: ``input_ids``, ``attention_mask``, ...).
- outputs: a tensor is ``output``; a tuple or list at the top is ``output_0``, ``output_1``,
  ...; a dict or ``ModelOutput`` gives its keys in its own order (``logits``); nested entries
  add ``.key`` or ``.index`` (``hidden_states.0``). ``None`` entries (a loss without labels)
  are left out; any other non-tensor output is an error.

Axis 0 of every input is exported as dynamic (the batch) where the model allows it; the result's
``input_shapes`` say which axes stayed symbolic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.io import atomic_write

EXPORTERS = ("dynamo", "torchscript")
INPUT = "input"
OUTPUT = "output"
_REASON_CHARS = 300  # a failure reason is cut to this many characters to stay on one line


class ExportError(ConfigError):
    """A model that no ONNX exporter could export (or onnxruntime could not run): one line with
    each exporter's reason. Nothing was written."""


def onnxruntime_module():
    """``onnxruntime``, after checking that ``onnx`` (which both exporters need) imports too."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "--format onnx needs the packages onnx and onnxruntime: pip install 'sparsegrain[onnx]'"
        ) from None
    return onnxruntime


def example_inputs(example: Any) -> tuple[str, list[str], list[torch.Tensor]]:
    """How ``example`` is passed (``"tensor"``, ``"positional"`` or ``"keyword"``), the ONNX
    input names and the tensors, in graph order."""
    if isinstance(example, torch.Tensor):
        return "tensor", [INPUT], [example]
    if isinstance(example, Mapping):
        kind, names, tensors = "keyword", [str(k) for k in example], list(example.values())
    elif isinstance(example, (tuple, list)):
        kind, tensors = "positional", list(example)
        names = [f"{INPUT}_{i}" for i in range(len(tensors))]
    else:
        raise ConfigError(
            f"example input: a tensor, a tuple/list of tensors or a dict of tensors, "
            f"got {type(example).__name__}"
        )
    if not tensors:
        raise ConfigError("example input: empty; give at least one tensor")
    for name, t in zip(names, tensors, strict=True):
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"example input '{name}': a tensor, got {type(t).__name__}")
    return kind, names, tensors


def flatten_outputs(out: Any, name: str = OUTPUT) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of a model's output, in the documented order."""
    found: list[tuple[str, torch.Tensor]] = []
    _flatten(out, name, True, found)
    names = [n for n, _ in found]
    if not found:
        raise ExportError("the model returns no tensor; ONNX needs at least one output")
    if len(set(names)) < len(names):
        raise ExportError(f"the model's outputs give one name twice: {', '.join(names)}")
    return found


def _flatten(out: Any, name: str, top: bool, found: list) -> None:
    if isinstance(out, torch.Tensor):
        found.append((name, out))
    elif out is None:
        return
    elif isinstance(out, Mapping):
        for key, value in out.items():
            _flatten(value, str(key) if top else f"{name}.{key}", False, found)
    elif isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            _flatten(value, f"{name}_{i}" if top else f"{name}.{i}", False, found)
    else:
        raise ExportError(f"output '{name}' is a {type(out).__name__}; ONNX outputs are tensors")


def output_diffs(
    got: list[tuple[str, torch.Tensor]], want: list[tuple[str, torch.Tensor]]
) -> dict[str, float]:
    """Output name -> max abs difference, for two ``flatten_outputs`` lists of the same names
    and shapes (an empty tensor differs by 0)."""
    if [n for n, _ in got] != [n for n, _ in want]:
        raise ConfigError(
            f"outputs {', '.join(n for n, _ in got)} do not match the reference's "
            f"{', '.join(n for n, _ in want)}"
        )
    return {
        n: float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max())
        if b.numel()
        else 0.0
        for (n, a), (_, b) in zip(got, want, strict=True)
    }


def rebuild_outputs(like: Any, values: list[torch.Tensor]) -> Any:
    """``values`` (in ``flatten_outputs`` order) put back into the structure of ``like``: a
    tensor, tuples, lists and dicts (a ``ModelOutput`` becomes a plain dict)."""
    it = iter(values)

    def build(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return next(it)
        if isinstance(obj, Mapping):
            return {k: build(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [build(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(build(v) for v in obj)
        return obj

    return build(like)


class _Flat(nn.Module):
    """``model`` as a function of positional tensors that returns a flat tuple of tensors: the
    one shape both exporters take the same way, so names and order stay ours."""

    def __init__(self, model: nn.Module, kind: str, names: list[str]):
        super().__init__()
        self.model, self.kind, self.names = model, kind, names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = _call(self.model, self.kind, self.names, tensors)
        return tuple(t for _, t in flatten_outputs(out))


def _call(model: nn.Module, kind: str, names: list[str], tensors) -> Any:
    if kind == "keyword":
        return model(**dict(zip(names, tensors, strict=True)))
    return model(*tensors)


def reason(err: BaseException) -> str:
    """One line for an exporter's failure: the exception summary the dynamo exporter writes,
    or the first line of the message, without colour codes, cut to a few hundred characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    line = lines[0] if lines else ""
    line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 3] + "..."


def _dynamo_bytes(flat: _Flat, tensors, names, out_names, opset) -> bytes:
    batch = tuple({0: torch.export.Dim.AUTO} if t.dim() else {} for t in tensors)
    program = torch.onnx.export(
        flat,
        tuple(tensors),
        dynamo=True,
        input_names=names,
        output_names=out_names,
        opset_version=opset,
        dynamic_shapes=(batch,),  # one entry: the tuple of ``*tensors``
        verbose=False,
    )
    return program.model_proto.SerializeToString()


def _torchscript_bytes(flat: _Flat, tensors, names, out_names, opset) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        flat,
        tuple(tensors),
        buffer,
        dynamo=False,
        input_names=names,
        output_names=out_names,
        dynamic_axes={n: {0: "batch"} for n, t in zip(names, tensors, strict=True) if t.dim()},
        opset_version=opset,
    )
    return buffer.getvalue()


_WRITERS = {"dynamo": _dynamo_bytes, "torchscript": _torchscript_bytes}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' notices (deprecations, tracer warnings, the partial graphs and log
    lines ``torch.export`` writes to stderr when it fails): a failure's reason is kept in the
    result instead, and an export that works prints nothing."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def _attempt(exporter: str, flat: _Flat, tensors, names, ref, opset) -> tuple[bytes, list]:
    """The ONNX bytes of one exporter and onnxruntime's outputs on the example, checked to be
    as many and of the same shapes as the model's; any failure raises."""
    import onnxruntime as ort

    out_names = [n for n, _ in ref]
    with _quiet():
        data = _WRITERS[exporter](flat, tensors, names, out_names, opset)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}
    got = [torch.from_numpy(a) for a in session.run(None, feed)]
    if len(got) != len(ref):
        raise ExportError(f"onnxruntime gives {len(got)} outputs, the model {len(ref)}")
    for (name, want), have in zip(ref, got, strict=True):
        if tuple(have.shape) != tuple(want.shape):
            raise ExportError(
                f"output '{name}': onnxruntime gives shape {tuple(have.shape)}, "
                f"the model {tuple(want.shape)}"
            )
    return data, got


def _graph_facts(data: bytes) -> dict[str, Any]:
    """The opset and the input shapes (``int`` or the name of a symbolic axis) of ONNX bytes."""
    import onnx

    proto = onnx.load_from_string(data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    shapes = {
        i.name: [d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }
    return {"opset": opset, "input_shapes": shapes}


def _check_args(exporter: str | None, opset: int | None) -> tuple[str, ...]:
    if exporter is not None and exporter not in EXPORTERS:
        raise ConfigError(
            f"exporter: '{exporter}' is not one of {', '.join(EXPORTERS)} (or None: dynamo, "
            "then TorchScript where dynamo fails)"
        )
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset: an ONNX opset version (an integer >= 7) or None, got {opset!r}")
    return EXPORTERS if exporter is None else (exporter,)


def export_onnx(
    model: nn.Module,
    example_input: Any,
    path: str | Path,
    *,
    opset: int | None = None,
    reference: Any = None,
    exporter: str | None = None,
) -> dict[str, Any]:
    """Write ``model`` (put in eval mode, left so) to ``path`` as ONNX, after onnxruntime ran
    the exported graph on ``example_input`` and every output was compared with ``reference``
    (default: the model's own outputs on ``example_input``).

    ``example_input``: a tensor, a tuple/list of tensors (positional) or a dict of tensors
    (keyword arguments); integer tensors (token ids) are fed as they are. ``opset``: ``None``
    for the exporter's default. ``exporter``: ``None`` tries dynamo, then TorchScript where
    dynamo fails; ``"dynamo"`` or ``"torchscript"`` tries only that one.

    Returns ``path``, ``bytes``, ``exporter`` (the one that wrote the file), ``fallback`` (why
    dynamo failed, or ``None``), ``opset``, ``input_names``, ``input_shapes``,
    ``output_names``, ``outputs`` (onnxruntime's results, in the structure of the model's
    output), ``diffs`` (output name -> max abs difference to the reference) and
    ``max_abs_diff`` (the largest of them). Nothing is written when no exporter succeeds: an
    ``ExportError`` names each one's reason."""
    order = _check_args(exporter, opset)
    onnxruntime_module()
    kind, names, tensors = example_inputs(example_input)
    model.eval()
    with torch.no_grad():
        own = _call(model, kind, names, tensors)
    ref_obj = own if reference is None else reference
    ref = flatten_outputs(ref_obj)
    model_names = [n for n, _ in flatten_outputs(own)]
    if [n for n, _ in ref] != model_names:
        raise ConfigError(
            f"reference outputs {', '.join(n for n, _ in ref)} do not match the model's "
            f"outputs {', '.join(model_names)}"
        )
    flat = _Flat(model, kind, names).eval()
    failures: dict[str, str] = {}
    for name in order:
        try:
            data, got = _attempt(name, flat, tensors, names, ref, opset)
        except Exception as e:  # noqa: BLE001 (an exporter fails in many ways; the next one may not)
            failures[name] = reason(e)
            continue
        break
    else:
        why = "; ".join(f"{k}: {v}" for k, v in failures.items())
        raise ExportError(f"ONNX export of {type(model).__name__} failed ({why}); nothing written")
    atomic_write(path, data)
    diffs = output_diffs(list(zip([n for n, _ in ref], got, strict=True)), ref)
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "exporter": name,
        "fallback": failures.get("dynamo"),
        **_graph_facts(data),
        "input_names": names,
        "output_names": [n for n, _ in ref],
        "outputs": rebuild_outputs(ref_obj, got),
        "diffs": diffs,
        "max_abs_diff": max(diffs.values()),
    }
