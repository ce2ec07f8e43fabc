"""The zeroing oracle, and the same oracle with its zeros fed at run time.

**The oracle** (docs/architecture.md). Removing unit ``u`` of a group (a head, a neuron, a conv channel) gives the
output of the unpruned model in which the weights that *consume* the unit's slice are zero: the output-projection
rows of head ``u``, fc2's row ``u``, the next layers' input channel ``u``. Head channels are zeroed in every tensor
that carries them (q and k channels meet in the scores, so zeroing the projection rows alone would not remove
them). A width group has none: its LayerNorms normalise over the kept channels (:attr:`DimGroup.inexact`), so a
width cut is checked against the torch model built narrower instead. :func:`zero_groups` writes the oracle's model.

**Masked copy.** :func:`masked_model` multiplies each of those weights by a mask along the unit axis, fed as a graph
input of one entry per unit: with the masks all ones it computes the model itself (a multiplication by 1 is exact),
and with zeros at some units it computes the oracle's model for that cut, which is the cut model's output. Measuring
the damage of many cuts (:func:`passes._core.importance.measure_damage`) then takes one session and one run per cut
with other masks, instead of a rewritten model and a new session per cut::

    W'[..., i, ...] = W[..., i, ...] * m[unit(i)]        (i along the unit axis; entries outside every unit: * 1)

where ``unit(i)`` comes from the group's layout of that weight (:func:`passes._core.dims.unit_positions`: a head's
``head_dim`` rows, a neuron's one row, a part of a fused ``[q | k | v]`` projection).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.errors import PassError
from passes._core.canonical import canonicalize
from passes._core.dims import unit_positions
from passes._core.graph import copy_model
from passes._core.kinds import KINDS

if TYPE_CHECKING:
    from passes._core.unit import PruneUnit


def zeroed_weights(unit: PruneUnit) -> list[str]:
    """The constants the oracle zeroes for ``unit`` (its consumers, or every carrying tensor for head channels);
    :class:`PassError` for a group with no zeroing oracle (a width)."""
    assert unit.group is not None
    if unit.group.inexact:
        raise PassError(f"{unit.id}: no zeroing oracle, {unit.group.inexact[0]}")
    return list(unit.group.sinks) if KINDS[unit.kind].consumers_only else list(unit.group.slices)


def zero_units(model: onnx.ModelProto, unit: PruneUnit, removed: Sequence[int]) -> onnx.ModelProto:
    """The zeroing oracle of one unit group: :func:`zero_groups`."""
    return zero_groups(model, [(unit, removed)])


def zero_groups(model: onnx.ModelProto, cuts: Sequence[tuple[PruneUnit, Sequence[int]]]) -> onnx.ModelProto:
    """A copy of ``model`` (canonical form, whose names the groups use) where the weights the oracle zeroes for each
    ``(unit, removed units)`` are 0 at those units: the pruned model's output must equal this model's."""
    out = canonicalize(model)  # the unit's tensor names are those of the canonical form
    inits = {t.name: t for t in out.graph.initializer}
    for unit, removed in cuts:
        for name in zeroed_weights(unit):
            ts = unit.group.slices[name]  # type: ignore[union-attr]
            arr = numpy_helper.to_array(inits[name]).copy()
            sl: list[Any] = [slice(None)] * arr.ndim
            sl[ts.axis] = unit_positions(ts.layout, list(removed))
            arr[tuple(sl)] = 0
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    return out


def zero_kept(model: onnx.ModelProto, units: Sequence[PruneUnit], keep: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """:func:`zero_groups` for the units of ``units`` named in ``keep`` (``{id: kept units}``; a group may keep
    none): every unit not kept is zeroed."""
    by_id = {u.id: u for u in units}
    cuts = [(by_id[uid], sorted(set(range(by_id[uid].count)) - {int(k) for k in kept})) for uid, kept in keep.items()]
    return zero_groups(model, cuts)


def plan_oracle(model: onnx.ModelProto, plan: Mapping[str, Any]) -> onnx.ModelProto:
    """The zeroing oracle of a whole plan (``vitseg.plan``, indices of ``model``): every unit it removes of the
    kinds with an oracle (heads, head channels, neurons, conv channels, by the group that names each entry) zeroed
    at once. A file the passes wrote from ``model`` with that plan must compute the same."""
    from passes._core.units import find_units

    cuts: list[tuple[PruneUnit, list[int]]] = []
    for kind, spec in KINDS.items():
        entries = plan.get(spec.section) or {}
        if not spec.exact or not entries:
            continue
        for unit in find_units(model, kind):
            entry = entries.get(unit.id)
            if entry and unit.prunable:
                cuts.append((unit, sorted(set(range(unit.count)) - set(entry["kept"]))))
    return zero_groups(model, cuts)


def maskable(unit: PruneUnit, model: onnx.ModelProto) -> str | None:
    """None when :func:`masked_model` can mask ``unit`` on ``model``; else why not (no zeroing oracle, or a weight
    that is not a float32 initializer of ``model``)."""
    if unit.group is None:
        return "not prunable"
    if unit.group.inexact:
        return f"no zeroing oracle ({unit.group.inexact[0]})"
    inits = {t.name: t for t in model.graph.initializer}
    for name in zeroed_weights(unit):
        if name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
            return f"{name} is not a float32 initializer"
    return None


def mask_input(name: str) -> str:
    """The graph input that carries the mask of budget layer ``name``."""
    return "mask/" + re.sub(r"[^A-Za-z0-9_.:/#-]", "_", name)


def masked_model(model: onnx.ModelProto, units: Mapping[str, PruneUnit]) -> onnx.ModelProto:
    """A copy of ``model`` whose oracle weights for each ``units[name]`` are multiplied by the float input
    :func:`mask_input` ``(name)`` of shape ``[unit count]`` (see the module docstring).

    ``model`` must be the model the units were found on (the canonical form), every unit :func:`maskable`. A weight
    that several groups zero (a head's projection rows and its v channels) is multiplied by each mask in turn."""
    out = copy_model(model)
    graph = out.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    current: dict[str, str] = {}  # weight -> the tensor that now stands for it (after the masks so far)
    nodes: list[onnx.NodeProto] = []
    for k, (name, unit) in enumerate(units.items()):
        why = maskable(unit, model)
        if why is not None:
            raise PassError(f"{name}: cannot be masked: {why}")
        group = unit.group
        assert group is not None
        mask = mask_input(name)
        graph.input.append(helper.make_tensor_value_info(mask, onnx.TensorProto.FLOAT, [group.count]))
        p = f"_mask{k}"
        graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), f"{p}_one"))
        nodes.append(helper.make_node("Concat", [mask, f"{p}_one"], [f"{p}_ext"], axis=0))  # [count + 1]
        for j, weight in enumerate(zeroed_weights(unit)):
            ts = group.slices[weight]
            shape = shapes[weight]
            index = np.full(shape[ts.axis], group.count, dtype=np.int64)  # outside every unit: the appended 1
            for u in range(group.count):
                index[unit_positions(ts.layout, [u])] = u
            bshape = [1] * len(shape)
            bshape[ts.axis] = shape[ts.axis]
            q = f"{p}_{j}"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(index, f"{q}_index"),
                    numpy_helper.from_array(np.asarray(bshape, np.int64), f"{q}_shape"),
                ]
            )
            src = current.get(weight, weight)
            nodes += [
                helper.make_node("Gather", [f"{p}_ext", f"{q}_index"], [f"{q}_flat"], axis=0),  # [axis length]
                helper.make_node("Reshape", [f"{q}_flat", f"{q}_shape"], [f"{q}_b"]),  # broadcast on the unit axis
                helper.make_node("Mul", [src, f"{q}_b"], [f"{q}_w"]),
            ]
            current[weight] = f"{q}_w"
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in current:
                node.input[i] = current[t]
    new = nodes + list(graph.node)  # the masking reads initializers and inputs only: it goes first
    del graph.node[:]
    graph.node.extend(new)
    del graph.value_info[:]
    return out


def all_ones(units: Mapping[str, PruneUnit]) -> dict[str, np.ndarray]:
    """The mask feeds under which :func:`masked_model` computes the model itself."""
    return {mask_input(name): np.ones(u.count, np.float32) for name, u in units.items()}
