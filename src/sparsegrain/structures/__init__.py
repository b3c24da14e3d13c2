"""Sparsity structures: groups, balance domains, scores and mask selection (pure functions).

Every structure is a group (elements zeroed and scored together) and a balance domain (a set of
groups in which the same number is kept); see DESIGN.md section 2. A weight is viewed as
``(K, C, R, S)``; ``Structure.group_view`` turns it into ``(D, G, E)`` (domains, groups per
domain, elements per group) and ``Structure.mask`` keeps the top-scoring groups of every domain.

Selection rules, exactly:
- a domain of G groups keeps ``max(min_keep, G - round(s * G))`` groups (Python ``round``: half to
  even); ``min_keep`` is 1 (n for nm), so no domain and no layer is ever entirely zeroed;
- the kept groups are the highest scores, ties to the lower index (stable sort): the same input
  always gives the same mask;
- the achieved sparsity is within ``tolerance(shape)`` of the target (one quota step, 1/G;
  ``1/C + 1/(R*S)`` for combined; for nm, of ``min(target, 1 - n/m)``) and never decreases as the
  target grows; the masks of higher targets are subsets of those of lower ones.
"""

from .catalog import Channel, Filter, Fine, Kernel, KernelQuota, Neuron, Shape, Vector, Window
from .core import (
    SCORES,
    Score,
    Structure,
    as_4d,
    check_sparsity,
    from_4d,
    get_score,
    keep_count,
    register_score,
    select_top,
    shape_4d,
)
from .heads import Head
from .names import STRUCTURES, describe, parse_structure
from .parametric import NM, Block, Combined
from .select import global_sparsities, group_scores
from .transposed import Transposed
from .verify import sparsity, verify

__all__ = [
    "NM",
    "SCORES",
    "STRUCTURES",
    "Block",
    "Channel",
    "Combined",
    "Filter",
    "Fine",
    "Head",
    "Kernel",
    "KernelQuota",
    "Neuron",
    "Score",
    "Shape",
    "Structure",
    "Transposed",
    "Vector",
    "Window",
    "as_4d",
    "check_sparsity",
    "describe",
    "from_4d",
    "get_score",
    "global_sparsities",
    "group_scores",
    "keep_count",
    "parse_structure",
    "register_score",
    "select_top",
    "shape_4d",
    "sparsity",
    "verify",
]
