"""Cutting unit groups of every kind, in one place: the rewrite (:func:`passes._core.dims.apply_groups`), the plan
it writes (kept indices per unit, per conv layer, and the torch tensor slices) and the weight map.

:func:`apply_cuts` keeps ``keep[id]`` of each unit group, whatever its kind; several groups on one axis (LeViT's q/k
and v channels of one fused projection, the parts of a concatenation) compose as the AND of their keep masks. The
plan's sections (:mod:`fileformat.plan`) record, for heads, head channels, neurons and widths, the kept units of
each group (``{id: {"kept", "total"}}``); for conv channels, the kept output positions of every conv or linear layer
whose output a cut group carries (``{module path: {"kept", "total"}}``, the layout ``models.prune_torch`` rebuilds),
and for all, the torch tensor slices ``{param: {axis: kept}}`` through the exporter's weight map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from fileformat.metadata import claim_sources, ranked_sources, read_metadata, weight_sources, write_metadata
from fileformat.plan import QK_SUFFIX
from passes._core.dims import apply_groups, kept_positions
from passes._core.graph import GraphView, copy_model, node_scope
from passes._core.kinds import KINDS
from passes._core.unit import ChannelGroup, PruneUnit

_LAYERS = ("Conv", "Gemm", "MatMul")


def torch_slices(
    view: GraphView, unit: PruneUnit, kept: Sequence[int], sources: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, list[int]]]:
    """The plan's ``slices`` for one unit: ``{torch param: {axis: kept indices}}`` in torch layout.

    A tensor the exporter stored once for several torch tensors is the one of this unit's module
    (:func:`_reader_module`, :func:`fileformat.metadata.ranked_sources`); ``sources`` receives
    ``{initializer: that source}``."""
    wmap = view.weight_map
    out: dict[str, dict[str, list[int]]] = {}
    assert unit.group is not None
    taken: set[str] = set()
    for name, ts in unit.group.slices.items():
        # a tensor stored once for many (a fresh model's zero biases, unit LayerNorm scales) is assigned to the
        # module of the node reading it, else of the layer it is the bias of, and never to a torch tensor another
        # copy of this group already stands for (the copies are equal: any one-to-one assignment is exact)
        ranked = ranked_sources(wmap.get(name), _reader_module(view, name, wmap) or unit.id)
        src = next((s for s in ranked if str(s["param"]) not in taken), ranked[0] if ranked else None)
        if src is None:
            continue
        taken.add(str(src["param"]))
        if sources is not None:
            sources[name] = src
        ndim = len(unit.group._shapes[name])
        axis = (ndim - 1 - ts.axis) if (src.get("transposed") and ndim == 2) else ts.axis
        positions = [int(i) for i in kept_positions(ts.layout, kept)]
        merge_slices(out, {str(src["param"]): {str(axis): positions}})
        if src.get("folded_bn") and axis == 0:  # the BatchNorm the exporter folded into this conv goes with it
            merge_slices(out, {f"{src['folded_bn']}.{t}": {"0": positions} for t in _BN_TENSORS})
    return out


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def merge_slices(into: dict[str, dict[str, list[int]]], more: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
    """Add ``more`` to the plan slices ``into``; an axis both cut keeps what both keep (several groups cut one axis:
    the q/k and v channels of LeViT's fused projection, the parts of a concatenation)."""
    for param, axes in more.items():
        have = into.setdefault(param, {})
        for axis, kept in axes.items():
            have[axis] = sorted(set(have[axis]) & set(kept)) if axis in have else [int(i) for i in kept]


def _reader_module(view: GraphView, name: str, wmap: dict[str, Any]) -> str | None:
    """The torch module of the node reading ``name``: its scope, or for a bias Add the module of the weight of the
    linear layer whose output it adds to (when that weight names one torch tensor)."""
    readers = view.consumer_nodes(name)
    if not readers:
        return None
    node = readers[0].node
    scope = node_scope(node)
    if scope:
        return scope
    if node.op_type == "Add":
        for other in node.input:
            ref = view.producer.get(other) if other != name else None
            if ref is not None and ref.node.op_type in ("MatMul", "Gemm", "Conv"):
                for w in ref.node.input[1:2]:
                    sources = weight_sources(wmap.get(w))
                    if len(sources) == 1:
                        return str(sources[0]["param"]).rsplit(".", 1)[0]
    return None


def layer_index(groups: Sequence[ChannelGroup]) -> dict[str, list[tuple[ChannelGroup, str, int]]]:
    """``{module path: [(group, weight, axis)]}``: for every conv or linear layer whose output (or, for a depthwise
    conv, whose channels) a prunable channel group carries, where that group sits in its weight."""
    from passes._core.channels import module_path

    out: dict[str, list[tuple[ChannelGroup, str, int]]] = {}
    for g in groups:
        if g.group is None or g.view is None:
            continue
        for i in sorted(g.group.nodes):
            node = g.view.nodes[i].node
            if node.op_type in _LAYERS and node.output[0] in g.group.dims and node.input[1] in g.group.slices:
                ts = g.group.slices[node.input[1]]
                out.setdefault(module_path(g.view, i), []).append((g, ts.tensor, ts.axis))
    return out


def chosen_cuts(units: Sequence[PruneUnit], keep: Mapping[str, Sequence[int]]) -> list[tuple[PruneUnit, list[int]]]:
    """The units ``keep`` cuts, with their sorted kept indices (ValueError for indices that are not distinct, out
    of ``[0, count)`` or none; a unit keeping all of its units is no cut)."""
    out = []
    by_id = {u.id: u for u in units}
    for uid, kept in keep.items():  # in the order asked: the plan's entries follow it
        u = by_id.get(uid)
        if u is None or not u.prunable:
            continue
        bad = len(set(kept)) != len(kept) or (len(kept) and (min(kept) < 0 or max(kept) >= u.count))
        if bad or not len(kept):
            raise ValueError(f"{u.id}: kept units must be distinct indices in [0, {u.count}), not empty")
        if len(kept) < u.count:
            out.append((u, sorted(int(k) for k in kept)))
    return out


def apply_cuts(
    model: onnx.ModelProto, units: Sequence[PruneUnit], keep: Mapping[str, Sequence[int]]
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A rewritten copy of ``model`` keeping ``keep[id]`` of each unit (indices ``0 .. count - 1``), and the plan it
    applied: the sections of the kinds cut, and ``slices``. Units not in ``keep`` or keeping everything are left
    alone; the units must have been found on ``model`` (its canonical form). The copy is not finalised."""
    chosen = chosen_cuts(units, keep)
    plan: dict[str, Any] = {KINDS[u.kind].section: {} for u, _ in chosen}
    plan["slices"] = {}
    if not chosen:
        return copy_model(model), plan
    view = chosen[0][0].view
    assert view is not None
    if view.model is not model:
        raise ValueError("internal: the units were found on another model than the one being rewritten")
    sources: dict[str, dict[str, Any]] = {}
    for u, kept in chosen:
        if u.kind != "channels":
            plan[KINDS[u.kind].section][u.id] = {"kept": kept, "total": u.count}
        merge_slices(plan["slices"], torch_slices(view, u, kept, sources))
    _qk_partners(plan, units)
    channels = [(u, kept) for u, kept in chosen if isinstance(u, ChannelGroup)]
    if channels:
        plan["channels"] = _layer_entries([u for u in units if isinstance(u, ChannelGroup)], channels)
    out = apply_groups(model, view, [(u.group, kept) for u, kept in chosen])  # type: ignore[misc]
    if channels:
        del out.graph.value_info[:]
    wmap = read_metadata(out).get("weight_map")
    if isinstance(wmap, dict) and sources:  # a cut tensor now holds exactly the torch tensor it was cut for
        claim_sources(wmap, sources)
        write_metadata(out, {"weight_map": wmap})
    return out, plan


def _qk_partners(plan: dict[str, Any], units: Sequence[PruneUnit]) -> None:
    """An entry for a block's v channels alone would read as q/k/v (older plans): its q/k entry says itself."""
    if "head_dim" not in plan:
        return
    apart = {u.id: u for u in units if u.kind == "head_dim" and u.id.endswith(QK_SUFFIX)}
    for uid in list(plan["head_dim"]):
        qk = apart.get(uid + QK_SUFFIX)
        if qk is not None and qk.id not in plan["head_dim"]:
            plan["head_dim"][qk.id] = {"kept": list(range(qk.count)), "total": qk.count}


def _layer_entries(
    groups: Sequence[ChannelGroup], chosen: Sequence[tuple[PruneUnit, list[int]]]
) -> dict[str, dict[str, Any]]:
    """The plan's ``channels``: per conv or linear layer whose output a cut group carries, its kept output
    positions (the AND of every cut group's mask on that axis) and its output channels, in the order the layers
    appear among all ``groups``."""
    masks: dict[str, np.ndarray] = {}
    for path, entries in layer_index(groups).items():
        for g, tensor, axis in entries:
            kept = next((k for h, k in chosen if h is g), None)
            if kept is None:
                continue
            layout = g.group.slices[tensor].layout  # type: ignore[union-attr]
            mask = np.zeros(g.view.shape(tensor)[axis], dtype=bool)  # type: ignore[index, union-attr]
            mask[kept_positions(layout, kept)] = True
            masks[path] = masks[path] & mask if path in masks else mask
    return {path: {"kept": np.flatnonzero(mask).tolist(), "total": int(mask.size)} for path, mask in masks.items()}
