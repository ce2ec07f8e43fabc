"""The one unit type of the engine: a group of ``count`` units cut together along one traced axis, whatever its
kind (:mod:`passes._core.kinds`): heads, head channels, neurons, widths, conv channels. Discovery finds them
(:mod:`passes._core.units`, :mod:`passes._core.channels`), importance scores them
(:mod:`passes._core.importance`), :func:`select_top` chooses what each keeps, :mod:`passes._core.cut` cuts them and
:mod:`passes._core.oracle` zeroes them: one of each, for every kind. A unit is known by its string ``id``: the
torch module path where the exporter's weight map or node metadata says it, else ``graph:<anchor node>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from passes._core.dims import DimGroup
from passes._core.graph import GraphView


@dataclass
class PruneUnit:
    """One prunable unit group: ``count`` units (heads / neurons) of ``unit_size`` channels each.

    ``id`` is the torch module path (``backbone.stages.2.1.transformer.0.attn``) when the exporter's weight map or
    node metadata says it, else ``graph:<anchor node>``. ``skip_reason`` is set when the unit cannot be cut safely.
    """

    id: str
    kind: str
    anchor: str
    count: int
    unit_size: int = 1
    params_per_unit: int = 0
    flops_per_unit: int = 0
    skip_reason: str | None = None
    group: DimGroup | None = field(default=None, repr=False)
    view: GraphView | None = field(default=None, repr=False, compare=False)

    @property
    def prunable(self) -> bool:
        return self.skip_reason is None and self.group is not None

    @property
    def params(self) -> int:
        """Parameters that scale with the unit count (all of them go when every unit goes)."""
        return self.params_per_unit * self.count

    @property
    def flops(self) -> int:
        return self.flops_per_unit * self.count


@dataclass
class AttentionBlock(PruneUnit):
    """A multi-head attention block: ``num_heads`` heads of ``head_dim``."""

    @property
    def num_heads(self) -> int:
        return self.count

    @property
    def head_dim(self) -> int:
        return self.unit_size

    @property
    def params_per_head(self) -> int:
        return self.params_per_unit

    @property
    def flops_per_head(self) -> int:
        return self.flops_per_unit


@dataclass
class Mlp(PruneUnit):
    """A transformer MLP (fc1 -> activation -> fc2) with ``hidden`` neurons."""

    @property
    def hidden(self) -> int:
        return self.count

    @property
    def params_per_neuron(self) -> int:
        return self.params_per_unit

    @property
    def flops_per_neuron(self) -> int:
        return self.flops_per_unit


@dataclass
class ChannelGroup(PruneUnit):
    """One set of channels cut together: the output channels of ``layers`` (their torch module paths; more than
    one where a residual sum ties them), ``count`` of them. ``id`` is the path of the layer it was traced from, the
    first in graph order whose output channels are the group's alone."""

    layers: list[str] = field(default_factory=list)
    source_nodes: list[int] = field(default_factory=list)
    scope: str = "backbone"

    @property
    def name(self) -> str:
        return self.id

    @property
    def size(self) -> int:
        return self.count

    @property
    def blocked(self) -> list[str]:
        return [self.skip_reason] if self.skip_reason else []

    @property
    def role(self) -> str:
        return "residual" if len(self.source_nodes) > 1 else "conv"


# -------------------------------------------------------------------------------------------------- selection
def tensor_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of initializer or Constant ``name`` of ``model`` (KeyError where it is neither)."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(name)


def keep_count(count: int, ratio: float) -> int:
    """Units kept when a fraction ``ratio`` is removed: ``count - floor(ratio * count)``, at least 1."""
    return max(1, count - int(math.floor(ratio * count + 1e-9)))
