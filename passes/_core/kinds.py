"""The unit kinds, in one table: what each kind is called, where its plan entries go, how its oracle works, and
the words the reports use. Pure data: imports nothing, so a command line can name the kinds before onnx loads.

A *unit* is what one cut removes (a head, a neuron, a conv channel); a *group* holds ``count`` units that are cut
together along one traced axis (:class:`passes._core.unit.PruneUnit`). The kinds, in the order a combined plan is
applied (``passes.compress``):

- ``head_dim``: the channels of every head of an attention block (q/k channels apart from v where a fused
  projection allows it);
- ``heads``: whole heads of an attention block;
- ``neurons``: the hidden neurons of a transformer MLP;
- ``width``: a transformer's embedding width (its LayerNorms normalise over the kept channels: no zeroing oracle);
- ``channels``: the output channels of a conv (or linear) layer group.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitKind:
    """One kind of unit.

    Attributes:
        name: the kind's name (``--units``, ``--kind``, budget layer prefixes).
        section: the plan section its cuts are recorded in (``fileformat.plan.SECTIONS``).
        unit: one unit in words, plural (report columns: ``heads``, ``head channels``).
        removed: what a cut removes, in a summary across kinds (``conv channels``, ``width channels``).
        group: one group in words (``attention block``).
        groups: groups in words, plural (``attention blocks``).
        exact: cutting equals zeroing (the oracle of docs/architecture.md); False for a width.
        consumers_only: the oracle zeroes only the weights that consume the unit (heads, neurons, conv channels);
            head channels are zeroed in every tensor that carries them (q and k meet in the scores).
        found_from: how discovery finds a group, for "nothing to prune" messages.
    """

    name: str
    section: str
    unit: str
    removed: str
    group: str
    groups: str
    exact: bool = True
    consumers_only: bool = True
    found_from: str = ""


KINDS: dict[str, UnitKind] = {
    k.name: k
    for k in (
        UnitKind(
            "head_dim", "head_dim", "head channels", "head channels", "attention block's head channels",
            "head-channel groups", consumers_only=False,
            found_from="the attention blocks, none of which can be cut",
        ),
        UnitKind(
            "heads", "heads", "heads", "heads", "attention block", "attention blocks",
            found_from="a Softmax over the keys of [..., heads, N, M] scores",
        ),
        UnitKind(
            "neurons", "neurons", "neurons", "neurons", "transformer MLP", "MLPs",
            found_from="a linear layer whose output reaches exactly one other linear layer through elementwise ops",
        ),
        UnitKind(
            "width", "width", "channels", "width channels", "transformer width", "transformer widths", exact=False,
            consumers_only=False, found_from="the attention blocks and MLPs, none of which can be cut",
        ),
        UnitKind(
            "channels", "channels", "channels", "conv channels", "channel group", "channel groups",
            found_from="the output channels of each group-1 Conv, Gemm or 2-D MatMul with constant weights",
        ),
    )
}  # fmt: skip

#: every kind, in the order a combined plan applies them
ORDER: tuple[str, ...] = tuple(KINDS)
#: the kinds of a transformer (traced from attention blocks and MLPs); conv channel groups are the other one
TRANSFORMER: tuple[str, ...] = ("head_dim", "heads", "neurons", "width")
