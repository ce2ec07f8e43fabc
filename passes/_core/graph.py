"""A read-only view of an ONNX graph for the structural passes: producers, consumers, constants, static shapes.

The view never changes the model it looks at. Shapes come from ONNX shape inference run on a light copy (large
float initializers become typed graph inputs, so inference does not copy their data); integer "shape vectors"
computed at run time (``Shape -> Gather -> Concat -> Reshape``) are evaluated with numpy by :meth:`GraphView.value`
when every shape they read is static.

:meth:`GraphView.node_flops` / :meth:`GraphView.flops` are the package's one FLOP counter (``graph_stats`` in
:mod:`passes._core.stats` reads them); see that module for the convention.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.metadata import read_metadata

log = logging.getLogger(__name__)

# Initializers above this many elements are shown to shape inference as typed inputs (no data copy).
_LIGHT_LIMIT = 64


@dataclass(frozen=True)
class NodeRef:
    """A node of the graph and its position in ``graph.node`` (positions are stable across ``CopyFrom``)."""

    index: int
    node: onnx.NodeProto

    @property
    def name(self) -> str:
        return self.node.name or f"{self.node.op_type}_{self.index}"


class GraphView:
    """Producers, consumers, constant values and static shapes of one model's main graph."""

    def __init__(
        self, model: onnx.ModelProto, *, pin_dynamic: bool = False, bind: Mapping[str, int] | None = None
    ) -> None:
        """``bind``: read the symbolic dimensions of the graph inputs named there as those sizes (a dynamic batch
        as 1, a dynamic height as the size the model is traced at: :func:`bindings`), so that shapes computed at
        run time from them fold; :meth:`runtime` then tells which values hold only under that binding.
        ``pin_dynamic``: also read every other symbolic dimension as 1 (the view FLOPs are counted on)."""
        self.model = model
        self.pin_dynamic = pin_dynamic
        self.bind = dict(bind or {})
        self._free: GraphView | None = None
        self._moved: GraphView | None = None  # the same graph bound to other sizes (free_value)
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.nodes = [NodeRef(i, n) for i, n in enumerate(self.graph.node)]
        self.producer: dict[str, NodeRef] = {}
        self.consumers: dict[str, list[tuple[NodeRef, int]]] = {}
        for ref in self.nodes:
            for o in ref.node.output:
                if o:
                    self.producer[o] = ref
            for k, i in enumerate(ref.node.input):
                if i:
                    self.consumers.setdefault(i, []).append((ref, k))
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.constant_nodes: dict[str, NodeRef] = {}
        self._aliases: dict[str, str] = {}  # Identity output -> its input
        for ref in self.nodes:
            if ref.node.op_type == "Constant" and ref.node.output and constant_node_value(ref.node) is not None:
                self.constant_nodes[ref.node.output[0]] = ref
            elif ref.node.op_type == "Identity" and ref.node.input and ref.node.output:
                self._aliases[ref.node.output[0]] = ref.node.input[0]
        #: readers of each constant, through Identity aliases (graph outputs count; the Identity itself does not)
        self.constant_readers: dict[str, int] = {}
        for name in [i for ref in self.nodes if ref.node.op_type != "Identity" for i in ref.node.input] + [
            o.name for o in self.graph.output
        ]:
            base = self.constant_base(name)
            if base is not None:
                self.constant_readers[base] = self.constant_readers.get(base, 0) + 1
        self.graph_inputs = {i.name for i in self.graph.input} - set(self.initializers)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.symbolic_inputs = any(
            not d.HasField("dim_value") or d.dim_value <= 0
            for i in self.graph.input
            if i.name in self.graph_inputs
            for d in i.type.tensor_type.shape.dim
        )
        self._shapes: dict[str, list[int] | None] = {}
        self._dims: dict[str, list[int]] = {}  # known ranks, -1 for a dimension that is not static
        self._types: dict[str, int] = {}
        self._values: dict[str, np.ndarray] = {}
        self._busy: set[str] = set()
        self._no_value: set[str] = set()
        self._pinned: GraphView | None = None
        self._weight_map: dict[str, Any] | None = None
        #: units found on this view, by kind (``passes._core.units``): one discovery serves every kind built on it
        self.found: dict[str, list[Any]] = {}
        self._infer_shapes()

    @property
    def weight_map(self) -> dict[str, Any]:
        """The exporter's weight map stored in the model's metadata (read once; empty when there is none)."""
        if self._weight_map is None:
            self._weight_map = dict(read_metadata(self.model).get("weight_map") or {})
        return self._weight_map

    # ----------------------------------------------------------------------------------------------- shapes
    def _infer_shapes(self) -> dict[str, list[int] | None]:
        """Static shapes of every tensor (``None`` where unknown or symbolic)."""
        light = onnx.ModelProto()
        light.ir_version = self.model.ir_version
        light.opset_import.extend(self.model.opset_import)
        g = light.graph
        light.functions.extend(self.model.functions)
        g.node.extend(self.graph.node)
        g.input.extend(i for i in self.graph.input if i.name not in self.initializers)
        if self.pin_dynamic or self.bind:
            for vi in g.input:
                for d in vi.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value") or d.dim_value <= 0:
                        if d.dim_param in self.bind:
                            d.dim_value = int(self.bind[d.dim_param])
                        elif self.pin_dynamic:
                            d.dim_value = 1
        g.output.extend(self.graph.output)
        for init in self.graph.initializer:
            if int(np.prod(init.dims)) > _LIGHT_LIMIT and init.data_type != onnx.TensorProto.INT64:
                g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            else:
                g.initializer.append(init)
        try:
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        except Exception as exc:  # an odd model still gets a view; rules then fail on unknown shapes
            log.warning("shape inference failed (%s); structural rules will skip what needs shapes", exc)
            inferred = light
        shapes: dict[str, list[int] | None] = {}
        partial: dict[str, list[int]] = {}
        types: dict[str, int] = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            types[vi.name] = t.elem_type
            if not t.HasField("shape"):
                shapes[vi.name] = None
                continue
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
            partial[vi.name] = dims
            shapes[vi.name] = None if any(d < 0 for d in dims) else dims
        for init in self.graph.initializer:
            shapes[init.name] = list(init.dims)
            types[init.name] = init.data_type
        for name, ref in self.constant_nodes.items():
            shapes[name] = list(ref.node.attribute[0].t.dims)
            types[name] = ref.node.attribute[0].t.data_type
        self._shapes, self._dims, self._types, self._values = shapes, partial, types, {}
        self._refine_shapes()
        return self._shapes

    def _refine_shapes(self) -> None:
        """Node-by-node inference where ONNX's whole-graph pass lost static sizes (e.g. after a Pad whose pads
        are computed from shapes, as in Swin): feed each node the integer inputs :meth:`value` can compute."""
        for ref in self.nodes:
            n = ref.node
            outs = [o for o in n.output if o]
            if not outs or all(self._shapes.get(o) is not None for o in outs) or n.op_type == "Constant":
                continue
            ins = [i for i in n.input if i]
            if any(self._shapes.get(i) is None or i not in self._types for i in ins):
                continue
            try:
                schema = onnx.defs.get_schema(n.op_type, self.opset, n.domain)
                types = {i: helper.make_tensor_type_proto(self._types[i], self._shapes[i]) for i in ins}
                data = {}
                for i in ins:
                    if self._types[i] in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                        v = self.value(i)
                        if v is not None:
                            data[i] = numpy_helper.from_array(np.asarray(v), i)
                inferred = onnx.shape_inference.infer_node_outputs(
                    schema,
                    n,
                    types,
                    data,
                    opset_imports=list(self.model.opset_import),
                    ir_version=self.model.ir_version,
                )
            except Exception:  # no schema or inference error: leave the shapes unknown
                continue
            for o, tp in inferred.items():
                t = tp.tensor_type
                if t.HasField("shape"):
                    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
                    if all(d >= 0 for d in dims):
                        self._shapes[o] = dims
                    self._dims[o] = dims
                self._types.setdefault(o, t.elem_type)

    def shape(self, name: str) -> list[int] | None:
        """The static shape of tensor ``name`` (``None`` when unknown or symbolic)."""
        return self._shapes.get(name)

    def dims(self, name: str) -> list[int | None] | None:
        """The shape of ``name`` as far as it is known: ``None`` for a symbolic dimension, ``None`` for no shape."""
        full = self.shape(name)
        if full is not None:
            return list(full)
        partial = self._dims.get(name)
        return None if partial is None else [d if d >= 0 else None for d in partial]

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def is_static(self, name: str) -> bool:
        return self.shape(name) is not None

    # ---------------------------------------------------------------------------------------------- constants
    def is_constant(self, name: str) -> bool:
        """True for initializers and outputs of ``Constant`` nodes."""
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` node output (through ``Identity`` aliases), else ``None``."""
        name = self.constant_base(name) or ""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constant_nodes:
            return constant_node_value(self.constant_nodes[name].node)
        return None

    def constant_base(self, name: str) -> str | None:
        """The initializer or ``Constant`` output that ``name`` is, through ``Identity`` aliases; else ``None``.

        In the canonical form (:mod:`passes._core.canonical`) there are no aliases and every constant has one
        reader; the view also serves models as users saved them."""
        for _ in range(64):
            if not name or self.is_constant(name):
                return name or None
            if name not in self._aliases:
                return None
            name = self._aliases[name]
        return None

    def constant_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of the constant ``name`` is (through aliases), read from the initializer without its data."""
        base = self.constant_base(name)
        if base is None:
            return None
        if base in self.initializers:
            return tuple(int(d) for d in self.initializers[base].dims)
        value = self.constant(base)
        return None if value is None else tuple(value.shape)

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant or of an integer tensor computable from constants and static shapes.

        Evaluates the small integer subgraphs the exporters build for shapes (Shape, Gather, Unsqueeze, Concat,
        Slice, Cast, arithmetic, Equal/Where, ConstantOfShape, Reshape); ``None`` when something on the way is
        dynamic or not one of those ops.
        """
        if name in self._values:
            return self._values[name]
        if name in self._busy or name in self._no_value:  # (a cycle is never in a valid graph)
            return None
        self._busy.add(name)
        try:
            out = self.constant(name)
            if out is None and name in self.producer:
                try:
                    out = self._evaluate(self.producer[name].node, name)
                except Exception:  # numpy refusing an odd combination means "not computable here"
                    out = None
        finally:
            self._busy.discard(name)
        if out is not None:
            self._values[name] = out
        else:  # remembered: a data tensor's whole ancestry would be walked again at every question
            self._no_value.add(name)
        return out

    def runtime(self, name: str) -> bool:
        """Whether the value of ``name`` is known only under this view's binding: a shape or size vector computed at
        run time from a symbolic dimension, which a rewrite must not write down as a constant."""
        if not self.bind or self.value(name) is None:
            return False
        return self.free_value(name) is None

    def free_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` (as :meth:`value`) whatever the symbolic dimensions are: ``None`` where it is known
        only under this view's binding. A value that shape inference cannot carry through the symbolic graph (a
        head_dim read from ``q``'s shape after a reshape whose target holds the batch) counts as free when the graph
        bound to three times every size gives the same value."""
        if not self.bind:
            return self.value(name)
        if self._free is None:
            self._free = GraphView(self.model)
        out = self._free.value(name)
        here = self.value(name) if out is None else None
        if here is None:
            return out
        if self._moved is None:
            self._moved = GraphView(self.model, bind={k: 3 * v for k, v in self.bind.items()})
        there = self._moved.value(name)
        same = there is not None and np.shape(there) == np.shape(here) and bool(np.all(there == here))
        return here if same else None

    def value_at(self, name: str, shapes: Mapping[str, Sequence[int]], depth: int = 32) -> np.ndarray | None:
        """The value of ``name`` (as :meth:`value`) were the tensors in ``shapes`` of those shapes: what a shape
        vector computed at run time becomes once the graph is cut (``Shape`` reads ``shapes`` first)."""
        if name in shapes or depth == 0:
            return None
        const = self.constant(name)
        if const is not None:
            return const
        ref = self.producer.get(name)
        if ref is None or len(ref.node.output) != 1:
            return None
        node = ref.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Shape", "Size"):
            s = shapes.get(node.input[0]) or self.shape(node.input[0])
            if s is None:
                return None
            if node.op_type == "Size":
                return np.array(int(np.prod(s)), dtype=np.int64)
            return np.array(list(s)[attrs.get("start", 0) : attrs.get("end", None)], dtype=np.int64)
        ins = [self.value_at(i, shapes, depth - 1) if i else None for i in node.input]
        present = [x for i, x in zip(node.input, ins) if i]
        if any(x is None for x in present):
            return None
        evaluate = _EVALUATORS.get(node.op_type)
        try:
            return None if evaluate is None else evaluate(ins, present, attrs, self.opset)
        except Exception:  # numpy refusing an odd combination means "not computable here"
            return None

    def _evaluate(self, node: onnx.NodeProto, name: str) -> np.ndarray | None:
        """The value of ``node``'s one output from its inputs' values (:data:`_EVALUATORS`), or ``None``."""
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op in ("Shape", "Size"):  # what they read is the input's static shape, not its value
            s = self.shape(node.input[0])
            if s is None:
                return None
            if op == "Size":
                return np.array(int(np.prod(s)), dtype=np.int64)
            return np.array(s[attrs.get("start", 0) : attrs.get("end", None)], dtype=np.int64)
        ins = [self.value(i) if i else None for i in node.input]
        if op in ("Gather", "Slice") and ins[0] is None and all(x is not None for x in ins[1:] if x is not None):
            ins[0] = self._partial_shape(node.input[0])  # the static entries of a shape read at run time
            if ins[0] is not None and all(ins[k] is not None for k, i in enumerate(node.input) if i):
                present = [x for i, x in zip(node.input, ins) if i]
                out = _EVALUATORS[op](ins, present, attrs, self.opset)
                return None if out is None or (np.asarray(out) < 0).any() else out
            return None
        present = [x for i, x in zip(node.input, ins) if i]
        if any(x is None for x in present) or len(node.output) != 1:
            return None
        evaluate = _EVALUATORS.get(op)
        return None if evaluate is None else evaluate(ins, present, attrs, self.opset)

    def _partial_shape(self, name: str) -> np.ndarray | None:
        """``Shape(x)`` with -1 for the dimensions of ``x`` that are not static, where ``name`` is such a Shape's
        output and ``x``'s rank is known: a Gather or Slice of its static entries has a value (timm's attention
        scale ``q.shape[-1] ** -0.5`` under a dynamic batch)."""
        ref = self.producer.get(name)
        if ref is None or ref.node.op_type != "Shape":
            return None
        dims = self._dims.get(ref.node.input[0])
        if dims is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in ref.node.attribute}
        return np.array(dims[attrs.get("start", 0) : attrs.get("end", None)], dtype=np.int64)

    # ------------------------------------------------------------------------------------------------- FLOPs
    def counting_view(self) -> GraphView:
        """The view FLOPs are read from: this one, or (symbolic graph inputs) one with those dimensions as 1."""
        if self.pin_dynamic or not self.symbolic_inputs:
            return self
        if self._pinned is None:
            self._pinned = GraphView(self.model, pin_dynamic=True)
        return self._pinned

    def _count_dims(self, name: str) -> list[int] | None:
        """Static shape of ``name``, else its known-rank shape with non-static dimensions read as 1."""
        s = self._shapes.get(name)
        if s is not None:
            return s
        d = self._dims.get(name)
        return None if d is None else [x if x > 0 else 1 for x in d]

    def node_flops(self, ref: NodeRef) -> int:
        """FLOPs of one node (0 for non-contraction ops and unknown shapes); the convention of
        :mod:`passes._core.stats`. A model with symbolic inputs is counted with those dimensions as 1."""
        view = self.counting_view()
        if view is not self:
            return view.node_flops(view.nodes[ref.index])
        n = ref.node
        if n.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose") or not n.output or len(n.input) < 2:
            return 0
        try:
            out = self._count_dims(n.output[0])
            x = self._count_dims(n.input[0])
            if not out or not x:
                return 0
            if n.op_type == "MatMul":
                return 2 * int(np.prod(out)) * x[-1]
            if n.op_type == "Gemm":
                return 2 * int(np.prod(out)) * (x[0] if self.attrs(n).get("transA", 0) else x[-1])
            w = self._count_dims(n.input[1])
            if not w or len(w) < 2:
                return 0
            per = w[1] * int(np.prod(w[2:]))  # Conv W: [C_out, C_in/g, k...]; ConvTranspose W: [C_in, C_out/g, k...]
            # ConvTranspose: every input element feeds C_out/g x prod(k) outputs
            return 2 * int(np.prod(out if n.op_type == "Conv" else x)) * per
        except Exception:  # an odd node (bad attribute, ragged shape) counts nothing rather than failing
            return 0

    def flops_by_node(self) -> dict[str, int]:
        """FLOPs of every contraction node with a nonzero count, by node name (``op_type_index`` when unnamed)."""
        view = self.counting_view()
        out: dict[str, int] = {}
        for ref in view.nodes:
            f = view.node_flops(ref)
            if f:
                out[ref.name] = out.get(ref.name, 0) + f
        return out

    def flops(self) -> int:
        """Contraction FLOPs of the whole graph (counts Swin's padded windows, which whole-graph ONNX inference
        leaves symbolic)."""
        view = self.counting_view()
        return sum(view.node_flops(ref) for ref in view.nodes)

    # ------------------------------------------------------------------------------------------------ helpers
    def attrs(self, node: onnx.NodeProto) -> dict[str, object]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def consumer_nodes(self, name: str) -> list[NodeRef]:
        """Distinct nodes reading ``name``."""
        seen: dict[int, NodeRef] = {}
        for ref, _ in self.consumers.get(name, []):
            seen[ref.index] = ref
        return list(seen.values())


# ------------------------------------------------------------------------------------- shape-vector evaluation
# Each evaluator computes one node's output from its inputs' values: ``(ins, present, attrs, opset)``, where ``ins``
# holds a value per input (``None`` for an empty name) and ``present`` the values of the inputs that are named.
Evaluator = Callable[[list[Any], list[np.ndarray], dict[str, Any], int], "np.ndarray | None"]


def _unsqueeze(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray:
    x = ins[0]
    axes = attrs.get("axes") if opset < 13 else ins[1].tolist()
    out = x
    for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray:
    axes = attrs.get("axes") if opset < 13 else (ins[1].tolist() if len(ins) > 1 else None)
    return np.squeeze(ins[0], axis=tuple(axes) if axes else None)


def _slice(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray:
    """``x[starts[k]:ends[k]:steps[k]]`` on ``axes[k]`` (attributes before opset 10, inputs from 10)."""
    x = ins[0]
    if opset < 10:
        starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
        steps = None
    else:
        starts, ends = ins[1].tolist(), ins[2].tolist()
        axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else None
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    idx: list[slice] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(idx)]


def _constant_of_shape(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray:
    v = attrs.get("value")
    fill = numpy_helper.to_array(v) if v is not None else np.zeros(1, dtype=np.float32)
    return np.full(ins[0].astype(np.int64).tolist(), fill.reshape(-1)[0], dtype=fill.dtype)


def _binary(fn: Callable[[Any, Any], Any]) -> Evaluator:
    """An evaluator of ``fn(a, b)`` for a node with exactly two named inputs."""

    def evaluate(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray | None:
        return fn(ins[0], ins[1]) if len(present) == 2 else None

    return evaluate


def _div(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray | None:
    """Integer division only where numpy's floor division is ONNX's (truncating) one: non-negative by positive."""
    a, b = ins[0], ins[1]
    if np.issubdtype(a.dtype, np.integer):
        return np.floor_divide(a, b) if (a >= 0).all() and (b > 0).all() else None
    return a / b


def _unary(fn: Callable[[Any], Any]) -> Evaluator:
    """An evaluator of ``fn(x)`` in ``x``'s dtype (shape arithmetic in float: transformers' MobileViT unfold
    computes ``Ceil(size / patch) * patch``)."""

    def evaluate(ins: list[Any], present: list[np.ndarray], attrs: dict[str, Any], opset: int) -> np.ndarray:
        return fn(ins[0]).astype(ins[0].dtype)

    return evaluate


#: the small integer subgraphs the exporters build for shapes, by op type (see :meth:`GraphView.value`)
_EVALUATORS: dict[str, Evaluator] = {
    "Identity": lambda ins, present, attrs, opset: ins[0],
    "Cast": lambda ins, present, attrs, opset: ins[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"])),
    "Gather": lambda ins, present, attrs, opset: np.take(ins[0], ins[1], axis=attrs.get("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda ins, present, attrs, opset: np.concatenate(present, axis=attrs["axis"]),
    "Slice": _slice,
    "Reshape": lambda ins, present, attrs, opset: ins[0].reshape(
        [d if d != 0 else ins[0].shape[i] for i, d in enumerate(ins[1].tolist())]
    ),
    "ConstantOfShape": _constant_of_shape,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "Max": _binary(np.maximum),
    "Min": _binary(np.minimum),
    "Div": _div,
    "Mod": lambda ins, present, attrs, opset: (np.fmod if attrs.get("fmod", 0) else np.mod)(ins[0], ins[1]),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Ceil": _unary(np.ceil),
    "Floor": _unary(np.floor),
    "Round": _unary(np.round),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
    "Sign": _unary(np.sign),
    "Pow": lambda ins, present, attrs, opset: np.power(ins[0], ins[1]).astype(ins[0].dtype),
    "Transpose": lambda ins, present, attrs, opset: np.transpose(ins[0], attrs.get("perm")),
    "Where": lambda ins, present, attrs, opset: np.where(ins[0], ins[1], ins[2]),
    "Not": lambda ins, present, attrs, opset: np.logical_not(ins[0]),
    "Range": lambda ins, present, attrs, opset: np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(
        ins[0].dtype
    ),
    "Expand": lambda ins, present, attrs, opset: ins[0] * np.ones(ins[1].tolist(), dtype=ins[0].dtype),
}


def bindings(model: onnx.ModelProto, size: Sequence[int] | None = None) -> dict[str, int]:
    """The sizes the symbolic dimensions of ``model``'s inputs are traced at: a batch (axis 0) as 1, and the height
    and width of an image input (``N x C x H x W``) as ``size``, else the ``vitseg.input_size`` metadata. A channel,
    head or width count never depends on them; only shape vectors do, and the passes cut only what does not depend
    on this binding (:meth:`GraphView.runtime`). Dimensions it cannot size are left out."""
    if size is None:
        meta = read_metadata(model).get("input_size")
        size = [int(v) for v in meta] if isinstance(meta, list) and len(meta) == 2 else None
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0 or not d.dim_param:
                continue
            if axis == 0:
                out.setdefault(d.dim_param, 1)
            elif len(dims) == 4 and axis >= 2 and size is not None:
                out.setdefault(d.dim_param, int(size[axis - 2]))
    return out


def analysis_view(model: onnx.ModelProto) -> GraphView:
    """The view units are found and traced on: symbolic input dimensions bound by :func:`bindings`."""
    return GraphView(model, bind=bindings(model))


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor of the main graph, in graph order: a cheap index for a pass that only needs
    this (a :class:`GraphView` also infers shapes and folds constants)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model`` (what a pass edits; its input is never changed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def unique_name(base: str, taken: set[str], *, sep: str = "_", start: int = 1, bare: bool = True) -> str:
    """A tensor or node name not in ``taken`` (which it joins): ``base`` itself when ``bare`` and free, else the
    first free ``f"{base}{sep}{k}"`` for ``k = start, start + 1, ...``. Each pass keeps its own spelling of the
    names it adds (``W_pruned``, ``W_pruned1``; ``W__1``), so the files it writes do not change."""
    name, k = base, start
    if not bare or name in taken:
        name = f"{base}{sep}{k}"
    while name in taken:
        k += 1
        name = f"{base}{sep}{k}"
    taken.add(name)
    return name


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (dense tensor or scalar/list attribute), else ``None``."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats"):
        return np.asarray(helper.get_attribute_value(a), dtype=np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
    return None  # sparse and string constants stay nodes


def _join_scopes(scopes: list[str]) -> str:
    """``["backbone", "stages.1", "stages.1.2", "conv"]`` (a torch scope per module, list children named
    ``parent.index``) or full paths per level -> ``backbone.stages.1.2.conv``."""
    out: list[str] = []
    for seg in (s for s in scopes if s):
        if out and seg.startswith(out[-1] + "."):
            out[-1] = seg
        else:
            out.append(seg)
    return ".".join(out)


def metadata_scopes(node: onnx.NodeProto) -> list[str]:
    """The dynamo exporter's ``name_scopes`` node metadata (outermost first), or ``[]``."""
    for p in node.metadata_props:
        if p.key.endswith("name_scopes"):
            try:
                scopes = json.loads(p.value)
            except ValueError:
                try:
                    scopes = ast.literal_eval(p.value)
                except (ValueError, SyntaxError):
                    scopes = p.value
            if isinstance(scopes, list):
                return [str(s) for s in scopes]
            return [str(scopes)] if scopes else []
    return []


def node_scope(node: onnx.NodeProto) -> str | None:
    """The torch module path a node was exported from: the dynamo exporter's ``name_scopes`` metadata, else the
    legacy exporter's node name (``/backbone/stages.1/stages.1.2/conv/Conv``); ``None`` when neither says."""
    scopes = metadata_scopes(node)
    if scopes:
        return _join_scopes(scopes) or None
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return _join_scopes(node.name.split("/")[1:-1]) or None
    return None
