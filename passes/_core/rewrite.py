"""Graph rewrites as rules of three steps, the way onnxscript's rewriter states them (``pattern``, ``check``,
``rewrite``), for the exact rewrites of ``passes.optimize``.

A rule is a subclass of :class:`RewriteRule`:

* :meth:`~RewriteRule.prepare` builds what the other steps read (a copy of the model to edit, a
  :class:`passes._core.graph.GraphView`, consumer counts): once per model;
* :meth:`~RewriteRule.pattern` lists the candidates: structure only (a chain of ops connected as the rewrite needs);
* :meth:`~RewriteRule.check` turns one candidate into a match, or says in words why it cannot be rewritten exactly
  (a reduction over other axes, an intermediate read elsewhere, a shape not known);
* :meth:`~RewriteRule.rewrite` writes the new graph for every match, in graph order.

:meth:`~RewriteRule.apply` runs the four and returns a :class:`RuleResult`: the rewritten model (never the input
itself), the matches and the candidates left alone with their reasons. Whether a rewrite is kept is the pass's
call (``passes.optimize`` runs the result on onnxruntime against the input). The rules are
:class:`passes._core.layernorm.LayerNormFusion` and :class:`passes._core.layout.LayoutChainRule`; each has its
tests on small graphs written in ONNX text (``tests/passes/test_rewrite_rules.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import onnx

__all__ = ["RewriteRule", "RuleResult", "consumer_count", "taken_names"]

Ctx = TypeVar("Ctx")
Cand = TypeVar("Cand")
Match = TypeVar("Match")


@dataclass
class RuleResult(Generic[Match]):
    """What :meth:`RewriteRule.apply` did: the model (rewritten where there were matches; a copy otherwise), the
    matches in graph order, and ``(where, why)`` for every candidate left alone."""

    model: onnx.ModelProto
    matches: list[Match] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many places were rewritten."""
        return len(self.matches)


class RewriteRule(ABC, Generic[Ctx, Cand, Match]):
    """A pattern, a check and a rewrite (see the module doc)."""

    #: the rule's name in reports
    name: str = ""

    @abstractmethod
    def prepare(self, model: onnx.ModelProto) -> Ctx:
        """What the other steps read, built once per model (``model`` is never changed)."""

    @abstractmethod
    def pattern(self, ctx: Ctx) -> list[Cand]:
        """The candidates, in graph order."""

    @abstractmethod
    def check(self, ctx: Ctx, candidate: Cand) -> Match | str:
        """The match of ``candidate``, or why it cannot be rewritten exactly."""

    @abstractmethod
    def rewrite(self, ctx: Ctx, matches: list[Match]) -> onnx.ModelProto:
        """The model with every match rewritten (not finalized)."""

    @abstractmethod
    def unchanged(self, ctx: Ctx) -> onnx.ModelProto:
        """The model to return when nothing matched (a copy: the input is never returned)."""

    def where(self, candidate: Cand) -> str:
        """How a skipped candidate is named in reports."""
        return str(candidate)

    def apply(self, model: onnx.ModelProto) -> RuleResult[Match]:
        """Prepare, find, check and rewrite; see :class:`RuleResult`."""
        ctx = self.prepare(model)
        matches: list[Match] = []
        skipped: list[tuple[str, str]] = []
        for candidate in self.pattern(ctx):
            found = self.check(ctx, candidate)
            if isinstance(found, str):
                skipped.append((self.where(candidate), found))
            else:
                matches.append(found)
        if not matches:
            return RuleResult(self.unchanged(ctx), [], skipped)
        return RuleResult(self.rewrite(ctx, matches), matches, skipped)


def taken_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name of the main graph (what a new name must not be)."""
    g = model.graph
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        names.update(n.output)
        names.add(n.name)
    return names


def consumer_count(model: onnx.ModelProto) -> Counter[str]:
    """How many node inputs read each tensor (a node reading a tensor twice counts twice)."""
    counts: Counter[str] = Counter()
    for n in model.graph.node:
        for i in n.input:
            if i:
                counts[i] += 1
    return counts
