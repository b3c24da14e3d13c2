"""The channel-dependency graph of a model, shared by coupling, BatchNorm pairing, compaction and
the FLOP profile: ``trace`` (torch.fx, else a run of the model) and ``channel_graph``."""

from .channels import Chan, ChannelGraph, Reader, layer_weight
from .trace import FX, RUN, Graph, Node, is_attention, is_conv1d_transposed, is_unit, trace
from .visit import channel_graph

__all__ = [
    "FX",
    "RUN",
    "Chan",
    "ChannelGraph",
    "Graph",
    "Node",
    "Reader",
    "channel_graph",
    "is_attention",
    "is_conv1d_transposed",
    "is_unit",
    "layer_weight",
    "trace",
]
