"""The ``STRUCTURES`` registry, ``parse_structure`` (spec string -> structure) and ``describe``."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..core.registry import Registry
from .catalog import Channel, Filter, Fine, Kernel, KernelQuota, Neuron, Shape, Vector, Window
from .core import Structure
from .heads import Head
from .parametric import NM, Block, Combined

_TABLE: tuple[tuple[type[Structure], tuple[str, ...], str], ...] = (
    (Fine, ("unstructured", "irregular"),
     "group one element W[k,c,r,s]; domain the layer (Mao 0-D, StructADMM)"),
    (Vector, (), "group one kernel row W[k,c,r,:]; domain the layer (Mao 1-D)"),
    (Kernel, (), "group one kernel W[k,c,:,:]; domain the layer (Mao 2-D)"),
    (Filter, (), "group one filter W[k,:,:,:]; domain the layer (Mao 3-D, StructADMM filter-wise)"),
    (Channel, ("admm-channel", "input-channel"),
     "group one input channel W[:,c,:,:]; domain the layer (StructADMM channel-wise)"),
    (Shape, ("column",),
     "group one GEMM column W[:,c,r,s]; domain the layer (StructADMM shape-wise)"),
    (Window, ("campfire-window",),
     "group one element; domain each kernel W[k,c,:,:], n of R*S kept in every kernel (Campfire)"),
    (KernelQuota, ("kernel_quota", "campfire-channel"),
     "group one kernel; domain each filter W[k,:,:,:], m of C kept in every filter (Campfire)"),
    (Combined, ("campfire-combined",),
     "kernel-quota, then window inside the surviving kernels; combined:SPLIT (Campfire)"),
    (NM, (), "nm:N:M; group one element; domain M consecutive elements of a (K, C*R*S) row"),
    (Block, (), "block:B1xB2; group a B1 x B2 tile of the (K, C*R*S) GEMM view; domain the layer"),
    (Neuron, ("mlp-neuron",),
     "group one MLP hidden unit (a Linear-like layer's output row); domain the layer"),
    (Head, ("attention-head",),
     "group one attention head (q, k, v rows and output columns); domain the attention module"),
)  # fmt: skip

STRUCTURES = Registry("structure")
for _cls, _aliases, _help in _TABLE:
    STRUCTURES.register(_cls.name, _cls, aliases=_aliases, help=_help)


def parse_structure(spec: str | Structure) -> Structure:
    """``"kernel"``, ``"campfire-window"``, ``"nm:2:4"``, ``"block:4x4"``, ``"combined:0.3"``, ...

    Names and aliases are case-insensitive. A ``Structure`` is returned as is. Unknown names and
    bad parameters raise ``ConfigError`` (with a "did you mean" and the allowed form).
    """
    if isinstance(spec, Structure):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"structure must be a string such as 'kernel' or 'nm:2:4', got {spec!r}")
    text = spec.strip().lower()
    head, *params = text.split(":")
    cls = STRUCTURES.get(head)
    return cls.from_params([p.strip() for p in params], text)


def describe(structure: str | Structure) -> str:
    """A few lines saying what the structure's group and domain are, for reports and ``list``."""
    st = parse_structure(structure)
    entry = STRUCTURES.entry(st.name)
    aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
    lines = [f"{st.spec}{aliases}", f"  group: {st.group}", f"  domain: {st.domain}"]
    lines += [f"  {line}" for line in st.notes]
    return "\n".join(lines)
