"""The op rules of the tracer: their contract (:class:`Rule`) and their registry (:func:`register`, :func:`lookup`).

A rule maps the unit axis from one tensor of a node to all its other tensors. Rules live in
:mod:`passes._core.dims.rules`, one module per family, each registered per op type and opset range, as onnxscript's
constant folder registers its evaluators::

    @register("Tile")
    def tile(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
        ...

    @register("Softmax", "LogSoftmax", version=(13, None))  # opset 13 on; another function for 1 .. 12
    def softmax(tr, ref, known, dim): ...

Adding an op is one registered function (in a family's module, or a new module imported by
:mod:`passes._core.dims.rules`) and its test on an ONNX-text graph (``tests/passes/rules/``); docs/architecture.md,
"Adding an op rule", shows one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from passes._core.dims.layout import Dim
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef

#: an opset version (exactly that one), a closed range ``(first, last)`` (``None``: open on that side), or ``None``
#: (every version)
Versions = int | tuple[int | None, int | None] | None


class Rule(Protocol):
    """The contract every op rule keeps (the one place it is stated).

    **Receives** ``(tr, ref, known, dim)``:

    * ``tr``: the :class:`~passes._core.dims.tracer.Tracer` of this walk: the graph (``tr.view``: shapes,
      constants, attributes, opset), the mode (``tr.width``, ``tr.sums``, ``tr.channels``), the group so far
      (``tr.group``), and helpers (``tr.shape`` raises for a shape that is not static);
    * ``ref``: the node (a :class:`~passes._core.graph.NodeRef`: ``ref.node``, its position ``ref.index``);
    * ``known``: the name of one of the node's tensors (input or output) known to carry the unit axis;
    * ``dim``: that tensor's :class:`~passes._core.dims.layout.Dim` (which axis, and its layout of factors).

    **Returns** a dict from tensor names of the node (inputs and outputs; empty names are ignored) to

    * a :class:`~passes._core.dims.layout.Dim`: the tensor carries the unit axis there (the tracer checks the size,
      records constants as slices, and walks on from computed tensors). Include ``known`` itself with ``dim``
      unless the rule normalised it (BatchNormalization's parameter vectors map to axis 1 of X);
    * ``None``: the tensor does not carry the unit (shape vectors, scalars, a broadcast axis of size 1). Should the
      walk reach it later with the unit, the trace fails, naming this node.

    Tensors left out are not visited through this node. A rule that reaches a size it must rewrite records the
    edit on ``tr.group`` (``shape_edits``, ``split_edits``, ``slice_edits``, ``group_edits``), and one that is
    not exact against the zeroing oracle says why with ``tr.note_inexact(ref)``.

    **Refuses** what it cannot follow exactly with ``raise tr.fail(ref, "reason")`` (a
    :class:`~passes._core.dims.tracer.TraceError` naming the node): the unit is then left whole, never cut half-way.
    """

    def __call__(self, tr: Tracer, ref: NodeRef, known: str, dim: Dim, /) -> dict[str, Dim | None]: ...


@dataclass(frozen=True)
class Registration:
    """One registered rule: the op (domain, type), the opset versions it applies to, and the function."""

    domain: str
    op: str
    versions: Versions
    rule: Rule

    def applies(self, version: int) -> bool:
        """Whether this rule applies at opset ``version`` of its domain."""
        if self.versions is None:
            return True
        if isinstance(self.versions, int):
            return version == self.versions
        first, last = self.versions
        return (first is None or version >= first) and (last is None or version <= last)


_REGISTRY: dict[tuple[str, str], list[Registration]] = {}


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _bounds(versions: Versions) -> tuple[float, float]:
    if versions is None:
        return float("-inf"), float("inf")
    if isinstance(versions, int):
        return versions, versions
    first, last = versions
    return (float("-inf") if first is None else first), (float("inf") if last is None else last)


def register(op: str, *more: str, version: Versions = None, domain: str = "") -> Callable[[Rule], Rule]:
    """Decorator: register the function as the rule of op types ``op, *more`` of ``domain`` at opset ``version``
    (an int: that version only; ``(first, last)``: that closed range, ``None`` open; ``None``: every version).

    Two rules of one op whose versions overlap are refused (``ValueError``), so the rule for a node is never a
    matter of import order."""

    def decorator(rule: Rule) -> Rule:
        for name in (op, *more):
            key = (_domain(domain), name)
            lo, hi = _bounds(version)
            for other in _REGISTRY.get(key, []):
                olo, ohi = _bounds(other.versions)
                if lo <= ohi and olo <= hi:
                    raise ValueError(f"rule for {name!r} at opset {version} overlaps {other.rule} at {other.versions}")
            _REGISTRY.setdefault(key, []).append(Registration(key[0], name, version, rule))
        return rule

    return decorator


def lookup(op: str, version: int, domain: str = "") -> Rule | None:
    """The rule registered for op type ``op`` of ``domain`` at opset ``version`` of that domain, else ``None``."""
    for reg in _REGISTRY.get((_domain(domain), op), []):
        if reg.applies(version):
            return reg.rule
    return None


def registrations() -> Iterator[Registration]:
    """Every registered rule, by domain and op type (what the rule tests must cover)."""
    for key in sorted(_REGISTRY):
        yield from _REGISTRY[key]


def registered_ops(domain: str = "") -> set[str]:
    """The op types of ``domain`` that have a rule at some opset."""
    return {op for d, op in _REGISTRY if d == _domain(domain)}
