"""What a loss's autograd graph reaches: the one graph walk that routes, absent terms and shared
parameters use, each once per key set."""

from __future__ import annotations

from typing import Any

from torch import Tensor

#: The class name autograd gives the backward node of an AOTAutograd-compiled region.
COMPILED_NODE = "CompiledFunctionBackward"


class Reach:
    """What one walk of a graph found: the ids of the leaf tensors it reaches (``leaves``),
    the autograd nodes it visits (``nodes``: a non-leaf tensor is reached iff its ``grad_fn``
    is among them), and whether it crossed a compiled region (``opaque``)."""

    __slots__ = ("leaves", "nodes", "opaque")

    def __init__(self, leaves: set[int], nodes: set[Any], opaque: bool) -> None:
        self.leaves, self.nodes, self.opaque = leaves, nodes, opaque

    def reaches(self, tensor: Tensor) -> bool:
        """Whether the walked graph differentiates ``tensor`` (a leaf or an output)."""
        node = tensor.grad_fn
        return node in self.nodes if node is not None else id(tensor) in self.leaves


def reach(*outputs: Tensor) -> Reach:
    """Walk the autograd graph of ``outputs`` once.

    A compiled region's backward is one autograd node (``CompiledFunctionBackward``) listing
    every input of the region; which output reaches which input is not in the graph. Crossing
    one makes the leaves found an over-approximation: "reaches nothing of X" stays exact,
    "reaches X" may not be.
    """
    seen: set[Any] = set()
    leaves: set[int] = set()
    opaque = False
    stack: list[Any] = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            leaves.add(id(variable))
        elif type(node).__name__ == COMPILED_NODE:
            opaque = True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return Reach(leaves, seen, opaque)


def walk(output: Tensor) -> tuple[set[int], bool]:
    """Ids of the leaves ``output``'s graph reaches, and whether the walk crossed a compiled
    region (see :func:`reach`)."""
    found = reach(output)
    return found.leaves, found.opaque


def reached_parameters(output: Tensor) -> set[int]:
    """Ids of the leaf tensors ``output``'s autograd graph reaches (walked once per key set).

    Through a ``torch.compile``'d region the walk sees one node whose inputs are every tensor
    the region used, so the answer is then a superset (see :func:`reach`)."""
    return reach(output).leaves
