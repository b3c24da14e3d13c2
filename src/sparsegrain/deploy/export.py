"""``sparsegrain export``: a run's final model as safetensors, ONNX or the compressed format,
optionally compacted first, every output checked against the masked PyTorch model.

Formats:

- ``safetensors``: with ``--compact``, the compacted weights and their architecture description
  (``sparsegrain.compact.save_compact``; load with ``load_compact``); without it, the masked
  weights as a plain ``state_dict`` (the run's ``model.safetensors``, re-checked).
- ``onnx``: the (compacted) model through ``sparsegrain.deploy.onnx.export_onnx`` (the dynamo
  exporter, TorchScript where dynamo fails; the record's ``onnx`` entry says which), verified
  with onnxruntime before the file is written; needs the ``onnx`` extra
  (``pip install 'sparsegrain[onnx]'``).
- ``compressed``: ``sparsegrain.deploy.compressed.write_compressed`` with each layer's structure
  from the run's ``summary.json`` (not with ``--compact``: the structures describe the masked
  shapes).

Each check runs the exported model on a batch of the run's test images and reports the largest
absolute difference to the masked model's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.storage import BitWidths
from ..core.errors import ConfigError
from ..core.io import load_tensors, save_tensors
from ..data.catalog import build_data
from ..models import create_model
from ..recipe.build import build_model
from ..runs.files import RECIPE, SUMMARY, WEIGHTS, load_model_state, read_run_recipe
from ..runs.records import check_output, layer_structures
from . import compressed
from .compact import compact as compact_model
from .compact import load_compact, save_compact
from .onnx import export_onnx, flatten_outputs, onnxruntime_module, output_diffs

__all__ = ["FORMATS", "export_onnx", "export_run", "load_run", "run_structures"]

FORMATS = ("safetensors", "onnx", "compressed")
CHECK_BATCH = 8  # test images the checks run on
# what an ONNX export's record keeps of ``export_onnx``'s result
ONNX_FACTS = ("exporter", "fallback", "opset", "input_names", "input_shapes", "output_names")


def load_run(run: str | Path) -> tuple[nn.Module, dict[str, Any], torch.Tensor, Path]:
    """The run's masked model (eval mode), its full zoo spec, a test batch and its weights path."""

    run = Path(run)
    recipe = read_run_recipe(run)
    if not (run / WEIGHTS).is_file():
        raise ConfigError(f"--run {run}: no {WEIGHTS}; the run did not finish")
    data = build_data(recipe.data, seed=recipe.train.seed)
    model = build_model(recipe, data.num_classes, data.in_channels)
    tensors, _ = load_tensors(run / WEIGHTS, "weights")
    load_model_state(model, tensors, str(run / WEIGHTS))
    m = recipe.model
    spec = {
        "name": m.name,
        **m.options,
        "num_classes": m.num_classes or data.num_classes,
        "in_channels": m.in_channels or data.in_channels,
    }
    example = next(iter(data.test))[0][:CHECK_BATCH].contiguous()
    return model.eval(), spec, example, run / WEIGHTS


def run_structures(run: str | Path) -> dict[str, str | None]:
    """Layer name -> structure spec (``None``: left dense), from the run's ``summary.json``."""
    return layer_structures(run, "--run")


@torch.no_grad()
def _diff(model: nn.Module, ref: Any, x: torch.Tensor) -> float:
    """The largest absolute difference over every output tensor (``flatten_outputs`` order)."""
    diffs = output_diffs(flatten_outputs(model.eval()(x)), flatten_outputs(ref))
    return max(diffs.values())


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    compact: bool = False,
    fold_bn: bool = False,
    channels_last: bool = False,
    fmt: str = "safetensors",
    bits: int | None = None,
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    """Export the final model of run directory ``run`` to ``out``; returns what was done:
    ``format``, ``path``, ``bytes``, ``source_bytes``, ``compact`` (the compaction record or
    ``None``), ``checks`` (name -> max abs difference to the masked model's outputs) and, for
    ONNX, ``onnx`` (the exporter used, why dynamo failed if it did, the opset, the input names
    and shapes, the output names).

    Every flag and the output path are checked before the work: ``out`` is never a file the
    export reads or a run's own file unless ``force``. ``fold_bn`` and ``channels_last`` (with
    ``compact`` only) give the compacted model its inference form (``compact``'s options)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format '{fmt}'; choose from: {', '.join(FORMATS)}")
    if fmt == "compressed" and compact:
        raise ConfigError(
            "--compact and --format compressed exclude each other: the compressed format stores "
            "the masked model with its structures"
        )
    for flag, on in (("--fold-bn", fold_bn), ("--channels-last", channels_last)):
        if on and not compact:
            raise ConfigError(f"{flag} applies to --compact only (the compacted model is rebuilt)")
    if bits is not None and fmt != "compressed":
        raise ConfigError("--bits applies to --format compressed only")
    if bits is not None and bits not in (16, 32):
        raise ConfigError(f"--bits: 32 (float32, exact) or 16 (float16, lossy), got {bits}")

    if fmt == "onnx":
        onnxruntime_module()  # fail before the work
    reads = [Path(run) / name for name in (RECIPE, WEIGHTS, SUMMARY)]
    out = check_output(out, reads=reads, force=force)
    structures = run_structures(run) if fmt == "compressed" else None
    model, spec, x, source = load_run(run)
    with torch.no_grad():
        ref = model(x)
    out = Path(out)
    record: dict[str, Any] = {"format": fmt, "path": str(out), "compact": None, "checks": {}}
    result = None
    if compact:
        result = compact_model(model, x, fold_bn=fold_bn, channels_last=channels_last)
        record["compact"] = result.to_dict()
        record["checks"]["compacted vs masked model"] = result.max_abs_diff
        log(result.format())
    exported = result.model if result is not None else model
    if fmt == "safetensors":
        _write_safetensors(out, exported, result, spec, model, ref, x, record)
    elif fmt == "onnx":
        res = export_onnx(exported, x, out, reference=ref)
        record["onnx"] = {key: res[key] for key in ONNX_FACTS}
        record["checks"]["onnxruntime vs masked model"] = res["max_abs_diff"]
    else:
        widths = BitWidths(value=bits) if bits is not None else None
        try:
            record["writer"] = compressed.write_compressed(model, structures, out, bits=widths)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"--format compressed: {e}") from None
        state, _ = compressed.read_compressed(out)
        fresh = load_run(run)[0]
        fresh.load_state_dict(state)
        label = "read back vs masked model" + (f" ({bits}-bit values)" if bits else "")
        record["checks"][label] = _diff(fresh, ref, x)
    record["bytes"] = out.stat().st_size
    record["source_bytes"] = source.stat().st_size
    log(_format_record(record, source))
    return record


def _write_safetensors(out, exported, result, spec, model, ref, x, record) -> None:
    """Write, read back into a freshly built model, and check the outputs."""

    if result is not None:
        save_compact(out, result, spec)
        back, _ = load_compact(out)
    else:
        save_tensors(out, exported.state_dict(), {"format": "sparsegrain-weights", "model": spec})
        opts = dict(spec)
        name, classes, channels = opts.pop("name"), opts.pop("num_classes"), opts.pop("in_channels")
        back = create_model(name, num_classes=classes, in_channels=channels, **opts)
        load_model_state(back, load_tensors(out, "exported weights")[0], str(out))
    record["checks"]["file read back vs masked model"] = _diff(back, ref, x)


def _format_record(record: dict[str, Any], source: Path) -> str:
    lines = [
        f"wrote {record['path']} ({record['format']}, {record['bytes']:,} bytes; "
        f"{source.name} of the run: {record['source_bytes']:,} bytes, "
        f"ratio {record['source_bytes'] / max(record['bytes'], 1):.2f}x)"
    ]
    c = record["compact"]
    if c is not None:
        lines.append(
            f"compacted: params {c['params_before']:,} -> {c['params_after']:,}, "
            f"MACs/example {c['macs_before']:,} -> {c['macs_after']:,}"
        )
    w = record.get("writer")
    if w is not None:
        lines.append(
            f"predicted: {w['predicted_bytes']:,} bytes (sparse layers at the storage analysis's "
            f"best encoding + other tensors raw + header); file / predicted = {w['ratio']:.4f}"
        )
    o = record.get("onnx")
    if o is not None:
        why = f" (dynamo failed: {o['fallback']})" if o["fallback"] else ""
        lines.append(f"exporter: {o['exporter']}{why}, opset {o['opset']}")
    for name, diff in record["checks"].items():
        lines.append(f"check: {name}: max abs diff {diff:.3g}")
    return "\n".join(lines)
