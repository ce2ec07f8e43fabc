"""Parameter counting on an ONNX file: what "params" means in every report."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

_WEIGHT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.DOUBLE,
    TensorProto.INT8,
    TensorProto.UINT8,
}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point and 8-bit initializers (and Constant nodes holding such tensors), counted once
    per reader.

    The exporters store equal tensors once (the zero biases of an untrained model, through ``Identity`` aliases
    too); that is storage, not the model's structure, so a tensor read by ``k`` nodes counts ``k`` times, as it does
    in the torch model and in the passes' canonical form (:mod:`passes._core.canonical`). Integer shape constants
    (int64) and quantisation scales/zero points of scalar size are not parameters.
    """
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_type in _WEIGHT_TYPES:
            sizes[init.name] = int(np.prod(init.dims)) if len(init.dims) else 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _WEIGHT_TYPES:
                    sizes[node.output[0]] = int(np.prod(attr.t.dims)) if len(attr.t.dims) else 1
    reads: dict[str, int] = {}
    alias: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in sizes:
            alias[node.output[0]] = node.input[0]
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in alias:
            continue
        for i in node.input:
            base = alias.get(i, i)
            if base in sizes:
                reads[base] = reads.get(base, 0) + 1
    for o in model.graph.output:
        base = alias.get(o.name, o.name)
        if base in sizes:
            reads[base] = reads.get(base, 0) + 1
    return sum(n * max(1, reads.get(name, 0)) for name, n in sizes.items() if n > 1)
