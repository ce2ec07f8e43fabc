"""Opset down-conversion for the dynamo exporter, which always builds opset 18 graphs.

onnx's version converter needs help on those graphs:

- it keeps ReduceMean-18's ``noop_with_empty_axes`` attribute, which ReduceMean-17 does not know (dropped here when
  it holds the default 0);
- LayerNormalization (opset 17) has no earlier form, so below 17 it is first decomposed into primitive ops;
- it has no 18 -> 17 adapters for Pad and Split, whose opset-18 forms only added an input (Pad's ``axes``) or an
  attribute (Split's ``num_outputs``): those nodes are written in their opset-13 form and kept out of the conversion
  (a model whose q/k head channels were cut apart from v splits its qkv projection by sizes: a Split-18);
- it has no 14 -> 13 adapters for ops whose opset-14 versions only added types (Add, Sub, Mul, Div, Relu, Identity;
  Reshape and BatchNormalization in their inference form), so 13 is reached by converting to 14 and relabelling,
  after checking that every node keeps its opset-13 meaning; the full checker then validates the graph against the
  opset-13 schemas.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Convert the default domain to ``opset`` with onnx's version converter (metadata kept)."""
    if _default_opset(model) == opset:
        return model
    src = onnx.ModelProto()
    src.CopyFrom(model)
    if opset < 17:
        src = decompose_layernorm(src)
    for node in src.graph.node:
        if node.op_type == "ReduceMean":
            keep = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            del node.attribute[:]
            node.attribute.extend(keep)
    # Ops whose opset-18 form means the same at opsets 13-17 (after a small rewrite) but that the converter has no
    # adapter for: parked in a private domain during conversion and brought back. Pad-18 only added an optional
    # `axes` input; Split-18 only added `num_outputs` (Split-13 takes the sizes as an input, as Split-18 can).
    parked = [n for n in src.graph.node if n.domain in ("", "ai.onnx") and _parkable(n, src)]
    for node in parked:
        node.domain = _PARK
    if parked:
        src.opset_import.add(domain=_PARK, version=1)
    converted = onnx.version_converter.convert_version(src, max(opset, 14))
    if parked:
        for node in converted.graph.node:
            if node.domain == _PARK:
                node.domain = ""
        keep = [o for o in converted.opset_import if o.domain != _PARK]
        del converted.opset_import[:]
        converted.opset_import.extend(keep)
    if opset == 13:
        converted = _relabel_14_as_13(converted)
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    return converted


_PARK = "vitseg.parked"


def _parkable(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """Whether ``node`` (opset 18) has an opset-13 form the converter lacks; a Split is rewritten to it here."""
    if node.op_type == "Pad":
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
        return (len(node.input) < 4 or not node.input[3]) and mode != b"wrap"
    if node.op_type == "Split":
        _split_sizes_as_input(node, model)
        return True
    return False


def _split_sizes_as_input(node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    """Rewrite a Split-18 ``num_outputs=n`` as Split-13 does it: equal parts need no sizes at all (Split-13 without
    a ``split`` input divides the axis equally); unequal ones (Split-18 makes the last part smaller) get the sizes
    as an int64 constant input, from the axis's static length (ValueError where it is not static)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    parts = attrs.get("num_outputs")
    if parts is None:
        return  # the sizes are an input already, as at opset 13, or the parts are equal
    keep = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(keep)
    length = _static_dim(model, node.input[0], int(attrs.get("axis", 0)))
    if length is not None and length % parts == 0:
        return
    if length is None:
        raise ValueError(
            f"Split {node.name or node.output[0]}: num_outputs={parts} on an axis of unknown length has no opset-13 "
            "form; export with a static input size or at opset 18."
        )
    chunk = -(-length // parts)  # Split-18: ceil-sized parts, the last one smaller
    sizes = np.array([chunk] * (parts - 1) + [length - chunk * (parts - 1)], dtype=np.int64)
    name = f"{node.name or node.output[0]}_split_sizes"
    model.graph.initializer.append(numpy_helper.from_array(sizes, name))
    node.input.append(name)


def _static_dim(model: onnx.ModelProto, tensor: str, axis: int) -> int | None:
    """The static length of ``tensor``'s ``axis`` by ONNX shape inference, or None."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    for vi in infos:
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            d = dims[axis % len(dims)] if dims else None
            return int(d.dim_value) if d is not None and d.HasField("dim_value") else None
    init = next((i for i in model.graph.initializer if i.name == tensor), None)
    return int(init.dims[axis % len(init.dims)]) if init is not None and init.dims else None


def decompose_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each single-output ``LayerNormalization`` of an opset-18 graph by primitive ops.

    y = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * scale + bias over the axes ``axis`` .. last, written as
    ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add (ReduceMean-18 takes its axes as an input; the
    square is a Mul because Pow-15 has no down-converter).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    rank: dict[str, int] = {}
    inferred = onnx.shape_inference.infer_shapes(out)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            rank[vi.name] = len(vi.type.tensor_type.shape.dim)
    new_nodes = []
    for node in graph.node:
        r = rank.get(node.input[0]) if node.input else None
        if node.op_type != "LayerNormalization" or len([o for o in node.output if o]) > 1 or r is None:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", -1))
        axis = axis + r if axis < 0 else axis
        p = (node.name or node.output[0]).replace("/", "_") + "_ln"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), dtype=np.float32), p + "_eps"),
                numpy_helper.from_array(np.arange(axis, r, dtype=np.int64), p + "_axes"),
            ]
        )
        x = node.input[0]
        new_nodes += [
            helper.make_node("ReduceMean", [x, p + "_axes"], [p + "_mean"], keepdims=1),
            helper.make_node("Sub", [x, p + "_mean"], [p + "_xc"]),
            helper.make_node("Mul", [p + "_xc", p + "_xc"], [p + "_sq"]),
            helper.make_node("ReduceMean", [p + "_sq", p + "_axes"], [p + "_var"], keepdims=1),
            helper.make_node("Add", [p + "_var", p + "_eps"], [p + "_vare"]),
            helper.make_node("Sqrt", [p + "_vare"], [p + "_std"]),
        ]
        has_scale = len(node.input) > 1 and bool(node.input[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        norm = p + "_norm" if (has_scale or has_bias) else node.output[0]
        new_nodes.append(helper.make_node("Div", [p + "_xc", p + "_std"], [norm]))
        if has_scale:
            scaled = p + "_scaled" if has_bias else node.output[0]
            new_nodes.append(helper.make_node("Mul", [norm, node.input[1]], [scaled]))
            norm = scaled
        if has_bias:
            new_nodes.append(helper.make_node("Add", [norm, node.input[2]], [node.output[0]]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    return out


_SAME_AT_13 = {"Add", "Sub", "Mul", "Div", "Relu", "Identity", "Reshape", "BatchNormalization"}


def _relabel_14_as_13(model: onnx.ModelProto) -> onnx.ModelProto:
    """Mark an opset-14 graph as opset 13 when no node uses what opset 14 added (checked, else ValueError).

    ``Reshape(allowzero=1)`` means the same as opset 13's Reshape when its shape is a constant without zeros.
    """
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Reshape" and attrs.get("allowzero", 0):
            shape = consts.get(node.input[1])
            if shape is None or (shape == 0).any():
                raise ValueError(f"{node.name}: Reshape with allowzero=1 on a shape with zeros has no opset-13 form")
            keep = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(keep)
        if node.op_type == "BatchNormalization" and attrs.get("training_mode", 0):
            raise ValueError(f"{node.name}: BatchNormalization in training mode has no opset-13 form")
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 13
    onnx.checker.check_model(model, full_check=True)
    return model
