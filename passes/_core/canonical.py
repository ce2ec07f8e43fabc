"""The canonical form every structural pass works on, and the storage form it writes.

What users bring differs from what the passes reason about in ways that change nothing the model computes:

* **stale ``graph.value_info``** (torch's dynamo exporter writes shapes for every intermediate and weight; after
  a rewrite they contradict the new weights). Dropped: shapes are inferred again by whoever needs them.
* **constants merged by value.** Both torch exporters store one initializer for all weights with equal values (zero
  biases, identical folded BatchNorms of an untrained model) and add ``Identity`` aliases of it. An inference graph
  has no tied weights, so that is storage, not tying: :func:`canonicalize` gives every reader its own copy
  (``<name>__<k>``, deterministic in node order), so that cutting one block never touches another.
* **``Constant`` nodes** become initializers, so every constant is found in one place.
* **shape vectors computed at run time** (``Shape -> Gather -> Concat -> Reshape`` in transformers' MobileViT
  unfold/fold and ``nn.MultiheadAttention``) become constants wherever the shapes they read are static, so shape
  inference sees through them. Integer tensors computed from the model input's *values* never fold.

:func:`merge_constants` is the way back to storage form: initializers with equal type, shape and bytes become one
again (the reader count of a weight is never a modelling fact). Both keep ``vitseg.weight_map`` consistent: a copy
inherits its original's torch sources, merged initializers take the union of theirs (see
:mod:`fileformat.metadata`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fileformat.metadata import merge_sources, read_metadata, write_metadata
from passes._core.graph import GraphView, NodeRef, bindings, constant_node_value, consumers, copy_model, unique_name

log = logging.getLogger(__name__)

# Node inputs that carry shapes, axes, sizes or indices (op type -> input positions); the values
# :func:`_fold_shapes` turns into constants when they are computable from static shapes.
SIZE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Resize": (2, 3),
    "Upsample": (1,),
    "Pad": (1, 2, 3),
    "Range": (0, 1, 2),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceL2": (1,),
    "ReduceL1": (1,),
    "ReduceProd": (1,),
    "ReduceSumSquare": (1,),
    "ReduceLogSumExp": (1,),
    "TopK": (1,),
    "OneHot": (1,),
    "Trilu": (1,),
    "CumSum": (1,),
    "Gather": (1,),
    "GatherElements": (1,),
    "ScatterND": (1,),
    "Where": (0,),
}
_MAX_FOLD_ROUNDS = 4
_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)


def _taken_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for n in graph.node:
        names.update(o for o in n.output if o)
    return names


def _unique(base: str, taken: set[str]) -> str:
    """A new name ``base__k`` (k = 1, 2, ...), the canonical form's spelling of a copy."""
    return unique_name(base, taken, sep="__", bare=False)


def _constant_nodes_to_initializers(graph: onnx.GraphProto) -> int:
    """Turn every ``Constant`` node of the main graph into an initializer of the same name; return the count."""
    keep: list[onnx.NodeProto] = []
    for n in graph.node:
        value = constant_node_value(n) if n.op_type == "Constant" and n.domain in ("", "ai.onnx") else None
        if value is None:
            keep.append(n)
        else:
            graph.initializer.append(numpy_helper.from_array(value, n.output[0]))
    moved = len(graph.node) - len(keep)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _drop_identity_aliases(graph: onnx.GraphProto) -> int:
    """Readers of ``Identity(initializer)`` read the initializer itself (the Identity is left for cleanup)."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return 0
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in alias:
                n.input[k] = alias[i]
    return len(alias)


def _unshare(graph: onnx.GraphProto, weight_map: dict[str, dict]) -> int:
    """Give every reader of a shared initializer its own copy; return the number of copies made."""
    inits = {t.name: t for t in graph.initializer}
    protected = {o.name for o in graph.output} | {i.name for i in graph.input}
    taken = _taken_names(graph)
    seen: set[str] = set()
    copies = 0
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name not in inits or name in protected:
                continue
            if name not in seen:
                seen.add(name)
                continue
            new = _unique(name, taken)
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = new
            graph.initializer.append(t)
            n.input[k] = new
            if name in weight_map:
                weight_map[new] = dict(weight_map[name])
            copies += 1
    return copies


def _fold_input(
    graph: onnx.GraphProto, view: GraphView, taken: set[str], new_inits: dict[str, str], n: onnx.NodeProto, k: int
) -> int:
    """Input ``k`` of node ``n`` becomes a new constant holding its value, when the view can compute it whatever the
    symbolic dimensions are (:meth:`GraphView.free_value`; 1, else 0)."""
    name = n.input[k]
    value = view.free_value(name)
    if value is None:
        return 0
    const = _unique(f"{name}_folded".lstrip("/"), taken)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), const))
    new_inits[name] = const
    n.input[k] = const
    return 1


def _fold_parts(
    graph: onnx.GraphProto, view: GraphView, taken: set[str], new_inits: dict[str, str], n: onnx.NodeProto
) -> int:
    """The inputs of ``Concat`` ``n`` whose values hold whatever the symbolic dimensions are, as constants: a cut
    then rewrites such an entry in place (the embedding width that ``nn.MultiheadAttention`` reads from its input's
    shape, beside the run-time ``tokens * batch``)."""
    folded = 0
    for k, name in enumerate(n.input):
        if not name or view.is_constant(name):
            continue
        if name in new_inits:
            n.input[k] = new_inits[name]
            folded += 1
        else:
            folded += _fold_input(graph, view, taken, new_inits, n, k)
    return folded


def _unshare_shape_vectors(graph: onnx.GraphProto) -> int:
    """Give each reader of a shape vector still computed at run time (a ``Concat``: only a symbolic dimension keeps
    one from folding) its own copy of that Concat, as :func:`_unshare` gives each reader of an initializer its own
    copy: dynamo builds ``[batch * windows, heads, tokens, head_dim]`` once for the blocks that share those sizes,
    and a cut of one block's heads must not rewrite the other's. Returns the number of copies."""
    inits = {t.name for t in graph.initializer}
    if not any(d.dim_param for i in graph.input if i.name not in inits for d in i.type.tensor_type.shape.dim):
        return 0  # every shape vector of a static graph was folded into a constant
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for m in graph.node:
        for k, name in enumerate(m.input):
            readers.setdefault(name, []).append((m, k))
    taken = _taken_names(graph)
    copies: list[tuple[int, onnx.NodeProto]] = []
    for index, n in enumerate(graph.node):
        if n.op_type != "Concat" or len(n.output) != 1:
            continue
        shape_reads = [(m, k) for m, k in readers.get(n.output[0], []) if k in SIZE_INPUTS.get(m.op_type, ())]
        for m, k in shape_reads[1:]:
            dup = onnx.NodeProto()
            dup.CopyFrom(n)
            dup.name = _unique(f"{n.name or n.output[0]}_copy", taken)
            dup.output[0] = _unique(f"{n.output[0]}_copy", taken)
            m.input[k] = dup.output[0]
            copies.append((index, dup))
    for index, dup in reversed(copies):
        graph.node.insert(index + 1, dup)
    return len(copies)


def _reuse_fold(n: onnx.NodeProto, k: int, new_inits: dict[str, str]) -> int:
    """Input ``k`` of ``n`` reads the constant already folded from its value in this round (1), else 0."""
    const = new_inits.get(n.input[k])
    if const is None:
        return 0
    n.input[k] = const
    return 1


def _fold_size_inputs(graph: onnx.GraphProto, fold: GraphView, taken: set[str], new_inits: dict[str, str]) -> int:
    """The integer size inputs (:data:`SIZE_INPUTS`) that ``fold`` can compute, as constants."""
    changed = 0
    for n in graph.node:
        for k in SIZE_INPUTS.get(n.op_type, ()):
            if k >= len(n.input) or not n.input[k]:
                continue
            name = n.input[k]
            if fold.is_constant(name) or name in fold.graph_inputs:
                continue
            reused = _reuse_fold(n, k, new_inits)
            if not reused and fold._types.get(name) in _INT_TYPES:
                reused = _fold_input(graph, fold, taken, new_inits, n, k)
            changed += reused
    return changed


def _is_small_shape_value(fold: GraphView, name: str) -> bool:
    """``name`` is computed by shape arithmetic, is not yet a constant, and holds at most 16 values derived from
    shapes."""
    ref = fold.producer.get(name)
    if ref is None or ref.node.op_type not in _SHAPE_MATH or fold.is_constant(name):
        return False
    shape = fold.shape(name)
    return shape is not None and len(shape) <= 1 and int(np.prod(shape)) <= 16 and _from_shape(fold, name)


def _fold_small_values(
    graph: onnx.GraphProto, fold: GraphView, bound: GraphView | None, taken: set[str], new_inits: dict[str, str]
) -> int:
    """Small values derived from static shapes anywhere else, as constants: the 1/sqrt(head_dim) scale that the
    exporters compute from q's shape for fused attention (Shape -> Slice -> Cast -> Sqrt -> Div), read by a Mul.
    Where the chain goes on computing a shape (a node whose output is a value once the symbolic dimensions are
    bound: MobileViT's ``B * C * n_h`` under a dynamic batch), it is folded where it ends, if at all: a channel
    count folded into a run-time product would not follow a cut of the channels."""
    changed = 0
    for n in graph.node:
        if bound is not None and n.op_type in _SHAPE_MATH and n.output and bound.value(n.output[0]) is not None:
            if n.op_type == "Concat" and bound.free_value(n.output[0]) is None:  # a run-time shape vector: its
                changed += _fold_parts(graph, bound, taken, new_inits, n)  # parts free of the binding folded
            continue
        for k, name in enumerate(n.input):
            if not name or k in SIZE_INPUTS.get(n.op_type, ()) or name in fold.graph_inputs:
                continue
            reused = _reuse_fold(n, k, new_inits)
            if not reused and _is_small_shape_value(fold, name):
                reused = _fold_input(graph, fold, taken, new_inits, n, k)
            changed += reused
    return changed


def _fold_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace shape-carrying integer inputs computable from static shapes by constants, to a fixed point. With
    symbolic input dimensions, only values that hold whatever they are (:meth:`GraphView.free_value`) are folded."""
    folded = 0
    for _ in range(_MAX_FOLD_ROUNDS):
        view = GraphView(model)
        bound = GraphView(model, bind=bindings(model)) if view.symbolic_inputs else None
        fold = view if bound is None else bound
        taken = _taken_names(model.graph)
        new_inits: dict[str, str] = {}
        changed = _fold_size_inputs(model.graph, fold, taken, new_inits)
        changed += _fold_small_values(model.graph, fold, bound, taken, new_inits)
        if not changed:
            break
        folded += changed
        _remove_dead(model.graph)
    return model, folded


def _squeezed(view: GraphView, x: str, i: int, axis: int, rank: int, out: dict[str, int]) -> bool:
    """Whether every reader of ``x`` is a ``Squeeze`` of ``axis`` alone (then each output maps to ``i`` in ``out``)."""
    users = view.consumer_nodes(x)
    if not users or x in view.graph_outputs:
        return False
    for ref in users:
        n = ref.node
        axes = view.value(n.input[1]) if len(n.input) > 1 and n.input[1] else view.attrs(n).get("axes")
        if n.op_type != "Squeeze" or axes is None or [int(a) % rank for a in np.ravel(axes)] != [axis]:
            return False
        out[n.output[0]] = i
    return True


def _pick_gather(view: GraphView, n: onnx.NodeProto, axis: int, shape: list[int], out: dict[str, int]) -> bool:
    """``Gather`` of one scalar index ``i`` along ``axis``: its output is entry ``i``."""
    if int(view.attrs(n).get("axis", 0)) % len(shape) != axis:
        return False
    idx = view.value(n.input[1])
    if idx is None or idx.ndim != 0:
        return False
    out[n.output[0]] = int(idx) % shape[axis]
    return True


def _pick_split(view: GraphView, n: onnx.NodeProto, axis: int, shape: list[int], out: dict[str, int]) -> bool:
    """``Split`` of ``axis`` into ones, each output squeezed: output ``i`` is entry ``i``."""
    attrs = view.attrs(n)
    if int(attrs.get("axis", 0)) % len(shape) != axis or len(n.output) != shape[axis]:
        return False
    sizes = view.value(n.input[1]) if len(n.input) > 1 and n.input[1] else attrs.get("split")
    if sizes is not None and list(np.ravel(sizes)) != [1] * shape[axis]:
        return False
    return all(_squeezed(view, o, i, axis, len(shape), out) for i, o in enumerate(n.output) if o)


def _pick_slice(view: GraphView, n: onnx.NodeProto, axis: int, shape: list[int], out: dict[str, int]) -> bool:
    """``Slice [i, i + 1)`` of ``axis`` (step 1), squeezed: entry ``i``."""
    bounds = [view.value(i) if i else None for i in n.input[1:5]]
    if len(bounds) < 3 or any(b is None for b in bounds[:3]) or bounds[2].size != 1:  # type: ignore[union-attr]
        return False
    start, end, ax = (int(np.ravel(b)[0]) for b in bounds[:3])  # type: ignore[arg-type]
    step = int(np.ravel(bounds[3])[0]) if len(bounds) > 3 and bounds[3] is not None else 1
    start = start % shape[axis] if start < 0 else start
    if ax % len(shape) != axis or step != 1 or min(end, shape[axis]) != start + 1:
        return False
    return _squeezed(view, n.output[0], start, axis, len(shape), out)


_PICKERS = {"Gather": _pick_gather, "Split": _pick_split, "Slice": _pick_slice}


def _picks(view: GraphView, t: str, axis: int) -> dict[str, int] | None:
    """The tensors that take one entry ``i`` of ``t`` along ``axis`` with that axis removed (``Gather`` of a scalar
    index; ``Split`` into ones or ``Slice [i, i+1)``, each followed only by ``Squeeze`` of the axis), mapped to
    ``i``; ``None`` when any reader of ``t`` does something else."""
    shape = view.shape(t)
    if shape is None or t in view.graph_outputs:
        return None
    out: dict[str, int] = {}
    for ref in view.consumer_nodes(t):
        pick = _PICKERS.get(ref.node.op_type)
        if ref.node.input[0] != t or pick is None or not pick(view, ref.node, axis, shape, out):
            return None
    return out


def _maybe_fused(readers: dict[str, list[onnx.NodeProto]], n: onnx.NodeProto) -> bool:
    """A cheap first look: a Reshape read only by a Transpose whose readers all pick parts."""
    users = readers.get(n.output[0], [])
    if n.op_type != "Reshape" or len(users) != 1 or users[0].op_type != "Transpose":
        return False
    picks = readers.get(users[0].output[0], [])
    return bool(picks) and all(p.op_type in ("Split", "Slice", "Gather") for p in picks)


def _parts_axis(view: GraphView, n: onnx.NodeProto) -> tuple[int, int] | None:
    """``(k, P)`` when Reshape ``n`` splits the last axis ``k`` of its input ``[..., P * rest]`` into
    ``[..., P, *rest]`` by a constant target without 0 entries from ``k`` on; else ``None``."""
    if n.op_type != "Reshape" or len(n.input) < 2:
        return None
    target = view.value(n.input[1])
    s_in, s_out = view.shape(n.input[0]), view.shape(n.output[0])
    if target is None or s_in is None or s_out is None or len(s_in) < 2:
        return None
    k = len(s_in) - 1
    parts = s_out[k] if len(s_out) > k + 1 else 0
    if (
        parts < 2
        or s_out[:k] != s_in[:k]
        or parts * int(np.prod(s_out[k + 1 :])) != s_in[k]
        or len(target) != len(s_out)
        or int(target[k]) != parts
        or any(int(v) == 0 for v in target[k:])
        or view.runtime(n.input[1])
        and not _tail_is_constant(view, n.input[1], k)
    ):
        return None
    return k, parts


def _tail_is_constant(view: GraphView, target: str, k: int) -> bool:
    """Whether the entries of shape vector ``target`` from ``k`` on hold whatever the symbolic dimensions are:
    ``target`` is a ``Concat`` whose inputs that cover those entries are free of the binding (a dynamic batch's
    ``Concat(Unsqueeze(Gather(Shape(x), 0)), [N], [P, heads, head_dim])``); the entries before may be computed at
    run time."""
    ref = view.producer.get(target)
    if ref is None or ref.node.op_type != "Concat":
        return False
    start = 0
    for name in ref.node.input:
        value = view.value(name)
        if value is None:
            return False
        start += int(np.size(value))
        if start > k and view.free_value(name) is None:
            return False
    return True


def _transposed_picks(view: GraphView, n: onnx.NodeProto, k: int) -> tuple[list[int], dict[str, int]] | None:
    """The permutation of the one Transpose reading Reshape ``n`` and the picks of its parts axis (``_picks``)."""
    users = view.consumer_nodes(n.output[0])
    if len(users) != 1 or users[0].node.op_type != "Transpose" or n.output[0] in view.graph_outputs:
        return None
    tr = users[0].node
    perm = [int(p) for p in view.attrs(tr).get("perm", list(range(len(view.shape(n.output[0]) or [])))[::-1])]
    picks = _picks(view, tr.output[0], perm.index(k))
    if not picks or any(t in view.graph_outputs for t in picks):
        return None
    return perm, picks


def _part_nodes(
    view: GraphView,
    ref: NodeRef,
    k: int,
    parts: int,
    perm: list[int],
    picks: dict[str, int],
    taken: set[str],
    new_inits: list[onnx.TensorProto],
    renames: dict[str, str],
) -> list[onnx.NodeProto]:
    """``Split`` of axis ``k`` of the Reshape's input into ``parts`` equal parts, and per part picked a Reshape to
    the target without axis ``k`` and the Transpose without it; the picks' readers are to read those."""
    n = ref.node
    x, target = n.input[0], np.asarray(view.value(n.input[1]), dtype=np.int64)
    base = _unique(f"{n.name or x}_parts".lstrip("/"), taken)
    outs = [f"{base}_{i}" for i in range(parts)]
    size = (view.shape(x) or [])[k] // parts
    split = onnx.helper.make_node("Split", [x], outs, name=base, axis=k)
    if view.opset >= 13:
        sizes = _unique(f"{base}_sizes", taken)
        new_inits.append(numpy_helper.from_array(np.array([size] * parts, dtype=np.int64), sizes))
        split.input.append(sizes)
    else:
        split.attribute.append(onnx.helper.make_attribute("split", [size] * parts))
    nodes = [split]
    runtime = view.runtime(n.input[1])
    if runtime:  # [..., P, *rest] -> [..., *rest]: the run-time head of the target, then the rest (one per part)
        head, starts, ends = (_unique(f"{base}_{s}", taken) for s in ("head", "starts", "ends"))
        new_inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), starts))
        new_inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), ends))
        nodes.append(onnx.helper.make_node("Slice", [n.input[1], starts, ends], [head], name=f"{base}_head"))
    new_perm = [p - (p > k) for p in perm if p != k]
    for i in sorted(set(picks.values())):
        r_out, t_out = f"{base}_{i}_reshaped", f"{base}_{i}_out"
        shape = _unique(f"{base}_{i}_shape", taken)  # each part its own: q, k and v are cut apart
        if runtime:
            tail = _unique(f"{base}_{i}_tail", taken)
            new_inits.append(numpy_helper.from_array(target[k + 1 :], tail))
            nodes.append(onnx.helper.make_node("Concat", [head, tail], [shape], name=f"{base}_target_{i}", axis=0))
        else:
            new_inits.append(numpy_helper.from_array(np.delete(target, k), shape))
        nodes.append(onnx.helper.make_node("Reshape", [outs[i], shape], [r_out], name=f"{base}_reshape_{i}"))
        nodes.append(onnx.helper.make_node("Transpose", [r_out], [t_out], name=f"{base}_transpose_{i}", perm=new_perm))
        renames.update({t: t_out for t, j in picks.items() if j == i})
    return nodes


def _split_fused_projections(model: onnx.ModelProto) -> int:
    """Take apart a fused projection's parts on its own output axis: ``Reshape [..., P, heads, head_dim] ->
    Transpose -> pick each of the P parts`` (timm's ``qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    .unbind(0)``, and ``kv``) becomes ``Split`` of the last axis into P equal parts, each reshaped and transposed
    the same way. The function is the same; q, k and v are then separate tensors from the projection on, so the
    head channels of q and k can be cut apart from those of v (they meet in different products). Returns the
    number of projections split."""
    graph = model.graph
    readers = consumers(model)
    if not any(_maybe_fused(readers, n) for n in graph.node):  # a canonical model, mostly: no view to build
        return 0
    view = GraphView(model, bind=bindings(model))  # symbolic dimensions as the passes trace them (runtime())
    taken = _taken_names(graph)
    new_inits: list[onnx.TensorProto] = []
    inserts: list[tuple[int, list[onnx.NodeProto]]] = []
    renames: dict[str, str] = {}
    for ref in view.nodes:
        found = _parts_axis(view, ref.node)
        picked = _transposed_picks(view, ref.node, found[0]) if found is not None else None
        if found is None or picked is None:
            continue
        nodes = _part_nodes(view, ref, *found, *picked, taken, new_inits, renames)
        inserts.append((ref.index, nodes))
    if inserts:  # an unnamed node is known by its position (NodeRef.name): keep the name it had before the insert
        for index, node in enumerate(graph.node):
            node.name = node.name or f"{node.op_type}_{index}"
    for index, nodes in reversed(inserts):
        for j, node in enumerate(nodes):
            graph.node.insert(index + j, node)
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in renames:
                node.input[j] = renames[name]
    graph.initializer.extend(new_inits)
    if inserts:
        _remove_dead(graph)
    return len(inserts)


_SHAPE_MATH = {
    "Shape", "Gather", "Slice", "Cast", "Sqrt", "Div", "Mul", "Reciprocal", "Pow", "Squeeze", "Unsqueeze", "Concat",
    "Add", "Sub", "Floor", "Ceil", "Reshape",
}  # fmt: skip


def _from_shape(view: GraphView, name: str, depth: int = 8) -> bool:
    """Whether ``name`` is computed (within ``depth`` ops of shape math) from a ``Shape`` of a tensor."""
    ref = view.producer.get(name)
    if ref is None or depth == 0 or ref.node.op_type not in _SHAPE_MATH:
        return False
    if ref.node.op_type == "Shape":
        return True
    return any(_from_shape(view, i, depth - 1) for i in ref.node.input if i and not view.is_constant(i))


def _remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers nobody reads (graph outputs count as read)."""
    needed = {o.name for o in graph.output}
    dead = []
    for k in range(len(graph.node) - 1, -1, -1):
        n = graph.node[k]
        if any(o in needed for o in n.output) or _has_subgraph(n):
            needed.update(i for i in n.input if i)
            needed.update(_subgraph_reads(n))
        else:
            dead.append(k)
    for k in dead:  # descending
        del graph.node[k]
    drop(graph.initializer, lambda t: t.name not in needed)


def drop(items: Any, dead: Callable[[Any], bool]) -> None:
    """Delete the entries ``dead`` picks from a repeated protobuf field, in place. Rebuilding the field instead
    (``del items[:]``, then ``extend``) copies every kept message: the whole model's weights, a second per pass at
    Swin-T's size."""
    for i in reversed([i for i, t in enumerate(items) if dead(t)]):
        del items[i]


def _has_subgraph(n: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)


def _subgraph_reads(n: onnx.NodeProto) -> set[str]:
    out: set[str] = set()
    for a in n.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for m in g.node:
                out.update(i for i in m.input if i)
                out.update(_subgraph_reads(m))
    return out


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The canonical form of ``model`` (a new model; ``model`` is not changed). It computes the same function.

    Idempotent: the canonical form of a canonical model is equal to it.
    """
    out = copy_model(model)
    graph = out.graph
    del graph.value_info[:]
    meta = read_metadata(out)
    weight_map = dict(meta.get("weight_map") or {})
    moved = _constant_nodes_to_initializers(graph)
    aliases = _drop_identity_aliases(graph)
    _remove_dead(graph)
    out, folded = _fold_shapes(out)
    folded += _unshare_shape_vectors(out.graph)
    fused = _split_fused_projections(out)
    copies = _unshare(out.graph, weight_map)
    if copies and "weight_map" in meta:
        write_metadata(out, {"weight_map": weight_map})
    if moved or aliases or folded or copies or fused:
        log.info(
            "canonical form: %d Constant node(s) as initializers, %d Identity alias(es) removed, %d shape input(s) "
            "folded, %d fused projection(s) split into their parts, %d shared initializer(s) given one copy per "
            "reader",
            moved,
            aliases,
            folded,
            fused,
            copies,
        )
    return out


def merge_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Storage form, in place and returned: initializers with equal type, dims and bytes become one.

    The first in initializer order keeps its name; its ``vitseg.weight_map`` entry takes the torch sources of every
    initializer merged into it.
    """
    graph = model.graph
    protected = {o.name for o in graph.output} | {i.name for i in graph.input}
    first: dict[tuple[int, tuple[int, ...], str], str] = {}
    rename: dict[str, str] = {}
    for t in graph.initializer:
        if t.name in protected or t.external_data:
            continue
        raw = t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
        key = (t.data_type, tuple(t.dims), hashlib.sha1(raw).hexdigest())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
    if not rename:
        return model
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    drop(graph.initializer, lambda t: t.name in rename)
    meta = read_metadata(model)
    if isinstance(meta.get("weight_map"), dict):
        wmap = dict(meta["weight_map"])
        for old, new in rename.items():
            if old in wmap:
                wmap[new] = merge_sources(wmap.get(new), wmap.pop(old))
        write_metadata(model, {"weight_map": wmap})
    log.info("merged %d initializer(s) equal to another one", len(rename))
    return model
