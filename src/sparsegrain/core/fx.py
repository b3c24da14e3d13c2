"""The torch.fx vocabulary shared by the graph readers (coupling, BatchNorm pairing, compaction):
which modules, functions and methods act per channel, pool or combine two tensors.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d)
POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d,
)  # fmt: skip
POINTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
    torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.dropout, F.dropout2d,
    torch.pow, torch.exp, torch.erf, torch.neg, torch.abs, torch.square, F.softplus, F.selu,
    F.celu, F.logsigmoid,
}  # fmt: skip
# (the GELU approximations of GPT-2 and others are written with pow, tanh and erf)
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "pow", "exp", "erf",
    "neg", "abs", "square", "__pow__", "__neg__",
}  # fmt: skip
# Pools keep a constant channel constant (max: padding is -inf; adaptive/global average: no pad).
CONST_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
CONST_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, torch.mean,
}  # fmt: skip
BINARY = {
    operator.add: torch.add, operator.iadd: torch.add, torch.add: torch.add,
    operator.sub: torch.sub, operator.isub: torch.sub, torch.sub: torch.sub,
    operator.mul: torch.mul, operator.imul: torch.mul, torch.mul: torch.mul,
}  # fmt: skip
BINARY_METHODS = {"add": torch.add, "add_": torch.add, "sub": torch.sub, "mul": torch.mul}
HARMLESS_METHODS = {"size", "dim"}  # read a tensor's shape, not its values


def untraced_note(prefix: str, error: Exception, example: bool = True) -> str:
    """One line for a model that could not be traced: ``prefix`` + the error's first line
    (``example=False``: only torch.fx was tried, for want of an example input)."""
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
    if not example:
        return (
            f"{prefix}torch.fx cannot trace the model ({type(error).__name__}: {reason}); pass "
            "example_inputs= to trace it from a run"
        )
    return f"{prefix}the model cannot be traced ({type(error).__name__}: {reason})"
