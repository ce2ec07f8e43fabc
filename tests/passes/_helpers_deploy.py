"""Small hand-built ONNX models for the deployment tests (check_target, simplify, bench, bundle)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_model(
    *,
    batch: int | str = 1,
    size: int | str = 16,
    opset: int = 13,
    classes: int = 4,
    seed: int = 0,
) -> onnx.ModelProto:
    """``image [batch, 3, size, size] -> Conv3x3(8) -> Relu -> Conv1x1(classes) -> logits``; str dims are dynamic."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((classes, 8, 1, 1)).astype(np.float32) * 0.3, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "b2")
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["logits"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes, size, size])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def qdq_model(*, zero_point: int = 0, unsigned: bool = False, opset: int = 13) -> onnx.ModelProto:
    """An explicitly quantised (QDQ) conv net: Q/DQ on the activation, DQ on INT8 (or UINT8) weights."""
    rng = np.random.default_rng(1)
    qtype, np_q = (TensorProto.UINT8, np.uint8) if unsigned else (TensorProto.INT8, np.int8)
    w_q = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(zero_point, np_q), "a_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "a_scale", "a_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xdq", "w", "bias"], ["logits"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def layernorm_reciprocal_model() -> onnx.ModelProto:
    """A decomposed LayerNorm written with Reciprocal + Mul (instead of Div), then scale and bias, then Softmax."""
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(np.linspace(-0.1, 0.1, 8).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="rm1", axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq"], ["v"], name="rm2", axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
        helper.make_node("Reciprocal", ["s"], ["rs"], name="rec"),
        helper.make_node("Mul", ["d", "rs"], ["n"], name="norm"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="scale"),
        helper.make_node("Add", ["ng", "beta"], ["y"], name="shift"),
        helper.make_node("Softmax", ["y"], ["p"], name="softmax", axis=-1),
        helper.make_node("ReduceMean", ["p"], ["pooled"], name="pool", axes=[-1]),
    ]
    graph = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
