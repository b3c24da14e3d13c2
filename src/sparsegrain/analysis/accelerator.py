"""An analytic SCNN-like count of memory references per layer. OUR RECONSTRUCTION.

SCNN (Parashar et al. 2017, "SCNN: An Accelerator for Compressed-sparse Convolutional Neural
Networks", ISCA) multiplies compressed non-zero weights by compressed non-zero input activations:
an 8x8 array of PEs, each holding a spatial tile of the layer; weights are processed in groups of
``Kc`` output channels; each PE multiplies a vector of ``F`` non-zero weights by a vector of ``I``
non-zero activations (an ``F x I`` Cartesian product per multiplier-array cycle) and scatters the
products into accumulator banks. Mao et al. (arXiv 1705.08922, sec. 5) count memory references on
such a machine to argue that coarse sparsity needs fewer index references, since one index serves
a whole kernel or filter. Neither paper gives the exact counting model: the one below is ours,
kept simple and explicit. Never print its numbers as the papers'.

Per layer, per example. Weight ``W`` is ``(K, Cg, R, S)`` (``Cg = C/g`` for ``g`` conv groups,
``Kg = K/g``), input ``(C, H, W)`` with non-zero fraction ``a``, output ``(K, Ho, Wo)``:

- tiles ``T``: the output plane is split over the ``pe_rows x pe_cols`` array in tiles of
  ``ceil(Ho/pe_rows) x ceil(Wo/pe_cols)``; ``T = ceil(Ho/th) * ceil(Wo/tw)`` tiles are non-empty
  (a Linear layer or a 1x1 plane uses one PE). Halos are ignored.
- output-channel groups: ``ceil(Kg/Kc)`` per conv group; filter ``k`` is in group
  ``(k // Kg) * ceil(Kg/Kc) + (k % Kg) // Kc``.
- ``weight = nnz(W) * T``: each PE fetches the non-zero weights of every output-channel group
  once (each weight is in exactly one group).
- ``weight_index = frags(W) * T``, with ``frags`` the number of distinct (index group,
  output-channel group) pairs holding a non-zero. The index group is one element for a layer left
  dense and for structures that are ``element_granular`` (fine, window, nm, combined: one index per
  non-zero weight), and a group of ``Structure.index_group`` otherwise: a kept kernel (kernel,
  kernel-quota) or filter needs one index, a kept input channel or GEMM column one per
  output-channel group it spans.
- ``activation = pairs * a * H * W``, with ``pairs`` the number of (output-channel group, input
  channel) pairs whose weights ``W[group, c, :, :]`` hold a non-zero: the non-zero activations of
  channel ``c`` are read once per output-channel group that uses them (a dense layer: ``a * C * H
  * W * ceil(Kg/Kc)``); a pruned channel or filter group is never read.
- ``activation_index = activation``: one index (a run length) per non-zero activation read.
- ``products = a * effective_valid`` (``flops.flops``: non-zero weight taps that land on real,
  non-padding inputs), the expected number of non-zero weight x non-zero activation products if
  activation zeros do not depend on position. Products a strided conv would compute and discard
  are not counted.
- ``accumulator = accumulator_refs_per_product * products`` (a read-modify-write per product).
- ``index = weight_index + activation_index``; ``total = weight + index + activation +
  accumulator``; ``bits`` weighs each by its bit width; ``array_cycles = products / (T * F * I)``
  is the ideal (fully used) multiplier-array cycle count, a lower bound.

Output activation writes (``K * Ho * Wo`` at most) and on-chip buffer refetches are not modelled.

``model_refs`` counts every weight a ``flops.Profile`` holds: its layers and its ``extra``
geometries (``nn.MultiheadAttention``'s ``in_proj_weight``, a module's own functional weights),
in call order. A block of rows of a weight (``attn.in_proj_weight[0:16]``, one projection of a
cross-attention) takes the weight's structure when the block fits it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.tables import format_table
from ..structures import Structure, as_4d, parse_structure
from .flops import flops
from .geometry import LayerGeometry

MODEL_NOTE = (
    "memory references: an SCNN-like analytic model, OUR RECONSTRUCTION (Parashar et al. 2017; "
    "Mao et al. 1705.08922 sec. 5 do not give the exact counting model); not the papers' numbers"
)
KEYS = ("weight", "weight_index", "activation", "activation_index", "index", "accumulator")


@dataclass(frozen=True)
class SCNNConfig:
    """Hardware constants of the SCNN-like model (SCNN's published configuration by default)."""

    pe_rows: int = 8  # PE array 8 x 8 = 64 PEs
    pe_cols: int = 8
    f: int = 4  # weight vector width F
    i: int = 4  # activation vector width I: F x I = 16 multipliers per PE
    accumulator_banks: int = 32  # 2 * F * I; recorded, not used (bank conflicts not modelled)
    kc: int = 8  # output channels per output-channel group
    weight_bits: int = 16
    index_bits: int = 4
    activation_bits: int = 16
    accumulator_bits: int = 24
    accumulator_refs_per_product: int = 2  # one read and one write per product

    def __post_init__(self) -> None:
        for name, v in self.__dict__.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SCNNConfig.{name} must be an integer >= 1, got {v!r}")


def tiles(geom: LayerGeometry, cfg: SCNNConfig) -> int:
    """``T``: non-empty PE tiles of the ``Ho x Wo`` output plane."""
    _, ho, wo = geom.out_shape
    th, tw = math.ceil(ho / cfg.pe_rows), math.ceil(wo / cfg.pe_cols)
    return math.ceil(ho / th) * math.ceil(wo / tw)


def channel_groups(k: int, groups: int, kc: int) -> Tensor:
    """``(K,)`` output-channel group of every filter (groups never cross a conv group)."""
    kg = k // groups
    per = math.ceil(kg / kc)
    ks = torch.arange(k)
    return (ks // kg) * per + (ks % kg) // kc


def _index_groups(occ4: Tensor, st: Structure | None) -> Tensor:
    """``(K, C, R, S)`` int64: the index group of every element (see the module doc)."""
    gst = None if st is None or st.element_granular else st.index_group
    if gst is None:
        return torch.arange(occ4.numel()).reshape(occ4.shape)
    d, g, e = gst.layout(tuple(occ4.shape))
    ids = torch.arange(d * g).reshape(d, g, 1).expand(d, g, e)
    return gst.from_group_view(ids, tuple(occ4.shape))


def _fragments(occ4: Tensor, st: Structure | None, group_of_k: Tensor) -> int:
    """Distinct (index group, output-channel group) pairs that hold a non-zero weight."""
    ids = _index_groups(occ4, st)
    n_og = int(group_of_k.max()) + 1
    keys = ids * n_og + group_of_k.reshape(-1, 1, 1, 1)
    return int(torch.unique(keys[occ4]).numel())


def _channel_pairs(occ4: Tensor, group_of_k: Tensor) -> int:
    """(output-channel group, input channel) pairs whose weights hold a non-zero."""
    k, c = occ4.shape[:2]
    used = occ4.reshape(k, c, -1).any(-1).to(torch.int64)  # (K, Cg)
    n_og = int(group_of_k.max()) + 1
    per_group = torch.zeros(n_og, c, dtype=torch.int64).index_add_(0, group_of_k, used)
    return int((per_group > 0).sum())


def layer_refs(
    geom: LayerGeometry,
    weight_mask: Tensor,
    act_density: float | None = None,
    cfg: SCNNConfig | None = None,
    structure: str | Structure | None = None,
) -> dict[str, float]:
    """Memory references of one layer (our reconstruction; formulas in the module docstring).

    ``weight_mask`` is the weight with zeros or a bool mask of ``geom.weight_shape``;
    ``act_density`` defaults to ``geom.act_density``; ``structure`` picks the index group
    (``None``: one index per non-zero weight, as fine). Returns ``weight``, ``weight_index``,
    ``activation``, ``activation_index``, ``index``, ``accumulator``, ``total``, ``bits``,
    ``products``, ``array_cycles``, ``tiles``.
    """
    cfg = cfg or SCNNConfig()
    a = geom.act_density if act_density is None else float(act_density)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"act_density must be in [0, 1], got {act_density!r}")
    st = None if structure is None else parse_structure(structure)
    reason = None if st is None else st.fits(weight_mask.shape)
    if reason is not None:
        raise ValueError(f"layer '{geom.name}': {reason}")
    macs = flops(geom, weight_mask)  # also checks the shape
    occ4 = as_4d(weight_mask.detach() != 0).cpu()
    group_of_k = channel_groups(occ4.shape[0], geom.groups, cfg.kc)
    t = tiles(geom, cfg)
    _, h, w = geom.in_shape
    activation = _channel_pairs(occ4, group_of_k) * a * h * w
    products = a * macs["effective_valid"]
    out = {
        "weight": int(occ4.sum()) * t,
        "weight_index": _fragments(occ4, st, group_of_k) * t,
        "activation": activation,
        "activation_index": activation,
        "accumulator": cfg.accumulator_refs_per_product * products,
    }
    out["index"] = out["weight_index"] + out["activation_index"]
    out["total"] = out["weight"] + out["index"] + out["activation"] + out["accumulator"]
    out["bits"] = (
        out["weight"] * cfg.weight_bits
        + out["index"] * cfg.index_bits
        + out["activation"] * cfg.activation_bits
        + out["accumulator"] * cfg.accumulator_bits
    )
    out.update(products=products, array_cycles=products / (t * cfg.f * cfg.i), tiles=t)
    return out


def model_refs(
    geoms: Sequence[LayerGeometry],
    weights: dict[str, Tensor],
    structures: dict[str, str | Structure | None] | None = None,
    act_density: dict[str, float] | None = None,
    cfg: SCNNConfig | None = None,
) -> dict:
    """``layer_refs`` of every geometry (rows with ``name`` and ``structure``) and totals.

    With a ``flops.Profile``, its ``extra`` geometries are counted too, looked up in ``weights``
    (a block ``w[r0:r1]`` of a weight there is cut from it), else taken as the profile saw them,
    and rows follow the profile's call order. A layer missing from ``structures`` (or mapped to
    None) is counted with one index per non-zero weight, as fine, and its row says structure
    ``"none"``; so is a block whose weight's structure does not fit it, with a line in
    ``notes``. One missing from ``act_density`` uses its profiled density. Raises ValueError
    naming layers of ``geoms`` that ``weights`` lacks. The result carries ``note`` =
    ``MODEL_NOTE``.
    """
    structures, act_density = structures or {}, act_density or {}
    missing = [g.name for g in geoms if g.name not in weights]
    if missing:
        raise ValueError(f"weights: no tensor for layers {missing}")
    profiled = getattr(geoms, "weights", {})
    notes: list[str] = []
    uses = [(g, weights[g.name], structures.get(g.name)) for g in geoms]
    uses += [
        (g, *_extra(g.name, weights, profiled, structures, notes))
        for g in getattr(geoms, "extra", ())
    ]
    rows = []
    for g, w, st in uses:
        refs = layer_refs(g, w, act_density.get(g.name), cfg, st)
        spec = "none" if st is None else parse_structure(st).spec
        rows.append({"name": g.name, "structure": spec, **refs})
    position = {n: i for i, n in enumerate(getattr(geoms, "order", ()))}
    rows.sort(key=lambda r: position.get(r["name"], len(position)))
    keys = (*KEYS, "total", "bits", "products", "array_cycles")
    total = {k: sum(r[k] for r in rows) for k in keys}
    cfg = cfg or SCNNConfig()
    return {"layers": rows, "total": total, "cfg": cfg, "note": MODEL_NOTE, "notes": notes}


_BLOCK = re.compile(r"^(.*)\[(\d+):(\d+)\]$")  # profile's name of rows r0:r1 of a weight


def _extra(name: str, weights, profiled, structures, notes: list[str]):
    """``(tensor, structure)`` of a profile's extra geometry (see ``model_refs``)."""
    block = _BLOCK.match(name)
    if name in weights:
        w = weights[name]
    elif block and block[1] in weights:
        w = weights[block[1]][int(block[2]) : int(block[3])]
    elif name in profiled:
        w = profiled[name]
    else:
        raise ValueError(f"weights: no tensor for '{name}', and the profile holds none")
    if name in structures or not block:
        return w, structures.get(name)
    st = structures.get(block[1])
    reason = None if st is None else parse_structure(st).fits(tuple(w.shape))
    if reason is not None:
        spec = parse_structure(st).spec
        notes.append(f"{name}: counted as fine; {spec} of {block[1]} does not fit it: {reason}")
        st = None
    return w, st


def format_refs(result: dict) -> str:
    """A table of ``model_refs``'s result in thousands of references, then ``MODEL_NOTE``."""
    cols = ("weight", "index", "activation", "accumulator", "total")
    head = ["layer", "structure", *(f"{c} k" for c in cols)]
    rows = [
        [r["name"], r["structure"], *(f"{r[c] / 1e3:.1f}" for c in cols)] for r in result["layers"]
    ]
    rows.append(["total", "", *(f"{result['total'][c] / 1e3:.1f}" for c in cols)])
    notes = "".join(f"\n{n}" for n in result.get("notes", []))
    return format_table(rows, head) + "\n" + result["note"] + notes
