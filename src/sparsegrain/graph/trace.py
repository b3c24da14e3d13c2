"""One graph of a model's calls, from ``torch.fx`` where it can trace, else from running it once.

Both front ends give the same thing: a list of :class:`Node` in execution order, each a call of a
*unit* (a module we read as a whole: Conv, Linear, BatchNorm and its subclasses, LayerNorm,
GroupNorm, activations, pools, attention blocks), a torch function or a tensor method, with the
shapes and dtypes of the tensors it produced. Modules that are not units are looked through:
their calls are recorded one by one.

- ``torch.fx`` (symbolic): ``fx.symbolic_trace`` with the units as leaf modules, shapes from one
  run of the traced graph on the example input. Fails on models with data-dependent Python
  control flow (Hugging Face models), then:
- running (``TorchFunctionMode``): the model is run once on the example input while every torch
  function and tensor method called outside a unit is recorded, and every unit call is recorded
  by forward hooks. Control flow is resolved by the example, which is what the compacted model
  will then be checked on.

``Graph.tracer`` names which one was used.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from ..core.fx import CONST_POOLS, POINTWISE_MODULES

FX = "torch.fx"
RUN = "a run of the model (torch.fx cannot trace it)"


@dataclass(eq=False)
class Node:
    """One call: ``op`` is ``placeholder`` | ``get_attr`` | ``call_module`` | ``call_function`` |
    ``call_method`` | ``output``, as in ``torch.fx``; tensor arguments are other Nodes."""

    op: str
    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    shape: tuple[int, ...] | None = None  # a tensor result: its shape
    dtype: torch.dtype | None = None
    users: list[Node] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Node({self.name})"


def is_tensor(node) -> bool:
    return isinstance(node, Node) and node.shape is not None


def is_channel_tensor(node) -> bool:
    """A floating tensor of rank >= 1: its values can be kept or removed by channel."""
    return is_tensor(node) and len(node.shape) >= 1 and node.dtype.is_floating_point


def tensor_args(node: Node) -> list[Node]:
    found: list[Node] = []
    _walk((node.args, node.kwargs), lambda n: found.append(n))
    return [n for n in found if is_tensor(n)]


def _walk(obj, fn: Callable) -> None:
    if isinstance(obj, Node):
        fn(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _walk(o, fn)
    elif isinstance(obj, dict):
        for o in obj.values():
            _walk(o, fn)


@dataclass
class Graph:
    nodes: list[Node]
    modules: dict[str, nn.Module]
    tracer: str


def is_attention(m: nn.Module) -> bool:
    """An attention block: ``nn.MultiheadAttention``, timm's ``Attention`` (fused ``qkv`` and
    ``num_heads``), a Hugging Face self-attention (``query``/``key``/``value``,
    ``q_proj``/``k_proj``/``v_proj`` or ``q_lin``/``k_lin``/``v_lin`` Linears)."""
    if isinstance(m, nn.MultiheadAttention):
        return True
    children = dict(m.named_children())
    if "qkv" in children and hasattr(m, "num_heads"):
        return True
    return any(
        all(isinstance(children.get(k), nn.Module) for k in names)
        for names in (
            ("query", "key", "value"),
            ("q_proj", "k_proj", "v_proj"),
            ("q_lin", "k_lin", "v_lin"),
        )
    )


def is_conv1d_transposed(m: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a Linear whose weight is stored ``(in, out)``."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "weight")


UNIT_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.Linear, _BatchNorm, nn.LayerNorm, nn.GroupNorm, *POINTWISE_MODULES,
    *CONST_POOLS, nn.AvgPool1d, nn.AvgPool2d, nn.Flatten, nn.Embedding,
)  # fmt: skip


def is_unit(m: nn.Module) -> bool:
    """Modules read as a whole (see the module doc)."""
    return (
        isinstance(m, UNIT_TYPES) or is_attention(m) or is_conv1d_transposed(m) or _is_drop_path(m)
    )


def _is_drop_path(m: nn.Module) -> bool:
    """Stochastic depth (timm ``DropPath``, torchvision ``StochasticDepth``): identity in eval."""
    return type(m).__name__ in ("DropPath", "StochasticDepth")


def trace(model: nn.Module, example_input) -> Graph:
    """The graph of ``model`` (in its current mode) on ``example_input`` (a tensor, a tuple of
    positional arguments or a mapping of keyword arguments): ``torch.fx`` first, else a run.
    Without an example input: ``torch.fx`` only, and no shapes. Raises what the run raises (or,
    without an example, what ``torch.fx`` raises)."""
    if example_input is None:
        return _trace_fx(model, None)
    kwargs = dict(example_input) if isinstance(example_input, dict) else {}
    args = () if kwargs else example_input
    args = args if isinstance(args, tuple) else (args,)
    try:
        if not kwargs:
            return _trace_fx(model, args)
    except Exception:  # noqa: BLE001 (fx raises many kinds; any of them means "not traced")
        pass
    return _trace_run(model, args, kwargs)


class _UnitTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_unit(m) or (
            super().is_leaf_module(m, qualname) and not isinstance(m, nn.Sequential)
        )


def _trace_fx(model: nn.Module, args: tuple | None) -> Graph:
    tracer = _UnitTracer()
    fgraph = tracer.trace(model)
    gm = fx.GraphModule(model, fgraph)
    if args is not None:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    mine: dict[fx.Node, Node] = {}
    out: list[Node] = []
    for fn in gm.graph.nodes:
        node = Node(fn.op, fn.target, name=fn.name)
        node.args = fx.node.map_arg(fn.args, mine.__getitem__)
        node.kwargs = fx.node.map_arg(fn.kwargs, mine.__getitem__)
        meta = fn.meta.get("tensor_meta")
        if isinstance(meta, TensorMetadata):
            node.shape, node.dtype = tuple(meta.shape), meta.dtype
        mine[fn] = node
        out.append(node)
    _link(out)
    return Graph(out, dict(model.named_modules()), FX)


def _link(nodes: list[Node]) -> None:
    for node in nodes:
        found: list[Node] = []
        _walk((node.args, node.kwargs), found.append)
        for arg in dict.fromkeys(found):
            arg.users.append(node)


# -- the run front end ----------------------------------------------------------------------------
_METHOD_OPS = {
    "__add__": operator.add, "__iadd__": operator.iadd, "__sub__": operator.sub,
    "__isub__": operator.isub, "__mul__": operator.mul, "__imul__": operator.imul,
    "__getitem__": operator.getitem, "__truediv__": operator.truediv,
    "__matmul__": operator.matmul,
}  # fmt: skip
_REFLECTED = {"__radd__": operator.add, "__rmul__": operator.mul, "__rsub__": None}
_SKIP = {"__get__", "__set__", "size", "dim", "__len__", "__format__", "__repr__", "item"}


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.nodes: list[Node] = []
        self.known: dict[int, Node] = {}
        self.alive: list[torch.Tensor] = []  # ids stay unique while the run lasts
        self.depth = 0
        self.names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.names.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self.count = 0

    def node_of(self, t: torch.Tensor) -> Node:
        node = self.known.get(id(t))
        if node is None:
            name = self.names.get(id(t))
            op, target = ("get_attr", name) if name else ("get_attr", f"<constant {self.count}>")
            node = self.add(op, target, (), {}, t)
        return node

    def add(self, op, target, args, kwargs, result) -> Node:
        self.count += 1
        label = target if isinstance(target, str) else getattr(target, "__name__", "call")
        node = Node(op, target, args, kwargs, name=f"{label}_{self.count}".replace(".", "_"))
        if isinstance(result, torch.Tensor):
            node.shape, node.dtype = tuple(result.shape), result.dtype
            self.known[id(result)] = node
            self.alive.append(result)
        self.nodes.append(node)
        return node

    def convert(self, obj):
        if isinstance(obj, torch.Tensor):
            return self.node_of(obj)
        if isinstance(obj, (tuple, list)):
            return type(obj)(self.convert(o) for o in obj) if type(obj) in (tuple, list) else obj
        if isinstance(obj, dict):
            return {k: self.convert(v) for k, v in obj.items()}
        return obj

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.depth:
            return result
        name = getattr(func, "__name__", "")
        if name in _SKIP or not _tensors_in(result):
            return result
        if name in _REFLECTED and _REFLECTED[name] is not None:
            op, target, args = "call_function", _REFLECTED[name], (args[1], args[0])
        elif name in _METHOD_OPS:
            op, target = "call_function", _METHOD_OPS[name]
        elif _is_method(func):
            op, target = "call_method", name
        else:
            op, target = "call_function", func
        outs = result if isinstance(result, (tuple, list)) else (result,)
        node = self.add(op, target, self.convert(tuple(args)), self.convert(kwargs), outs[0])
        if isinstance(result, (tuple, list)):  # one getitem per piece, as torch.fx writes it
            node.shape = None
            for i, piece in enumerate(outs):
                if isinstance(piece, torch.Tensor):
                    self.add("call_function", operator.getitem, (node, i), {}, piece)
        return result


def _tensors_in(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    return isinstance(obj, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in obj)


def _is_method(func) -> bool:
    name = getattr(func, "__name__", "")
    return getattr(torch.Tensor, name, None) is func or (
        getattr(func, "__objclass__", None) is torch._C.TensorBase
    )


def _trace_run(model: nn.Module, args: tuple, kwargs: dict | None = None) -> Graph:
    rec = _Recorder(model)
    names = {id(m): n for n, m in model.named_modules()}
    handles = []
    stack: list[tuple] = []

    def pre(m, inputs, kwargs):
        if rec.depth == 0:
            stack.append((rec.convert(tuple(inputs)), rec.convert(dict(kwargs))))
        rec.depth += 1

    def post(m, inputs, kwargs, output):
        rec.depth -= 1
        if rec.depth == 0:
            a, kw = stack.pop()
            outs = output if isinstance(output, (tuple, list)) else (output,)
            first = next((o for o in outs if isinstance(o, torch.Tensor)), None)
            node = rec.add("call_module", names[id(m)], a, kw, first)
            if isinstance(output, (tuple, list)):
                node.shape = None
                for i, piece in enumerate(outs):
                    if isinstance(piece, torch.Tensor):
                        rec.add("call_function", operator.getitem, (node, i), {}, piece)
        return output

    for m in model.modules():
        if m is not model and is_unit(m):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    placeholders = []
    kwargs = kwargs or {}
    for i, a in enumerate([*args, *kwargs.values()]):
        if isinstance(a, torch.Tensor):
            placeholders.append(rec.add("placeholder", f"input_{i}", (), {}, a))
    try:
        with torch.no_grad(), rec:
            result = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    outputs: list[torch.Tensor] = []
    _collect(result, outputs)
    out = Node("output", "output", (tuple(rec.node_of(t) for t in outputs),), name="output")
    nodes = [n for n in rec.nodes if n.op == "get_attr"] + [
        n for n in rec.nodes if n.op != "get_attr"
    ]
    nodes.append(out)
    _link(nodes)
    return Graph(nodes, dict(model.named_modules()), RUN)


def _collect(obj, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):  # ModelOutput is an OrderedDict
        for v in obj.values():
            _collect(v, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _collect(v, out)
