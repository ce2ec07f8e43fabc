"""graph_stats: the package's one FLOP counter (GraphView's static shapes) against hand counts and torch's count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes._core.graph import GraphView
from passes._core.stats import graph_stats


def _w(name: str, shape: list[int], dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.arange(int(np.prod(shape))).reshape(shape).astype(dtype), name)


def contraction_model(elem: int = TensorProto.FLOAT, qdq: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """MatMul, Gemm (transA, transB), grouped Conv, grouped ConvTranspose; with the FLOPs each must count."""
    dt = helper.tensor_dtype_to_np_dtype(elem)
    inits = [
        _w("w_mm", [16, 32], dt),
        _w("w_gemm", [24, 32], dt),  # transB: [N, K]
        _w("w_conv", [16, 2, 3, 3], dt),  # group 4: C_in / g = 2
        _w("w_convt", [16, 3, 2, 2], dt),  # group 2: C_out = 6
    ]
    nodes = []
    w_mm = "w_mm"
    if qdq:  # INT8 weight read through DequantizeLinear, as in a QDQ model
        inits[0] = _w("w_mm_q", [16, 32], np.int8)
        inits += [numpy_helper.from_array(np.array(0.1, dt), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes.append(helper.make_node("DequantizeLinear", ["w_mm_q", "s", "z"], ["w_mm_dq"], name="dq"))
        w_mm = "w_mm_dq"
    nodes += [
        helper.make_node("MatMul", ["x", w_mm], ["mm"], name="mm"),  # [2, 5, 16] x [16, 32]
        helper.make_node("Reshape", ["mm", "shape2d"], ["mm2"], name="flat"),  # [10, 32]
        helper.make_node("Transpose", ["mm2"], ["mm2t"], name="t", perm=[1, 0]),  # [32, 10]: A^T
        helper.make_node("Gemm", ["mm2t", "w_gemm"], ["gemm"], name="gemm", transA=1, transB=1),  # [10, 24]
        helper.make_node("Conv", ["img", "w_conv"], ["conv"], name="conv", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["conv", "w_convt"], ["convt"], name="convt", group=2, strides=[2, 2]),
    ]
    inits.append(numpy_helper.from_array(np.array([10, 32], dtype=np.int64), "shape2d"))
    graph = helper.make_graph(
        nodes,
        "contractions",
        [
            helper.make_tensor_value_info("x", elem, [2, 5, 16]),
            helper.make_tensor_value_info("img", elem, [1, 8, 6, 6]),
        ],
        [
            helper.make_tensor_value_info("gemm", elem, [10, 24]),
            helper.make_tensor_value_info("convt", elem, [1, 6, 12, 12]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = {
        "mm": 2 * (2 * 5 * 32) * 16,
        "gemm": 2 * (10 * 24) * 32,
        "conv": 2 * (1 * 16 * 6 * 6) * (2 * 3 * 3),
        "convt": 2 * (1 * 16 * 6 * 6) * (3 * 2 * 2),  # every input element feeds C_out/g x k x k outputs
    }
    return model, expected


@pytest.mark.parametrize(
    "elem,qdq",
    [(TensorProto.FLOAT, False), (TensorProto.FLOAT16, False), (TensorProto.FLOAT, True)],
    ids=["fp32", "fp16", "qdq"],
)
def test_hand_built_contractions(elem: int, qdq: bool) -> None:
    model, expected = contraction_model(elem, qdq)
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    stats = graph_stats(model)
    assert stats.node_flops == expected
    assert stats.flops == sum(expected.values()) == GraphView(model).flops()
    assert stats.params == 16 * 32 + 24 * 32 + 16 * 2 * 9 + 16 * 3 * 4  # int64 shapes and scalars are not params
    assert model.SerializeToString() == before  # the model is not changed


def _runtime_pad_model(batch: int | str) -> onnx.ModelProto:
    """Swin's pattern: pads computed at run time from Shape(x), then a MatMul on the padded windows."""
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "i1"),
        numpy_helper.from_array(np.array([7], dtype=np.int64), "seven"),
        numpy_helper.from_array(np.zeros(5, dtype=np.int64), "zeros5"),
        numpy_helper.from_array(np.zeros(1, dtype=np.int64), "zero1"),
        numpy_helper.from_array(np.zeros(1, dtype=np.int64), "zero1b"),
        _w("w", [4, 8]),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["h"], axis=0),  # [1]: H
        helper.make_node("Mod", ["h", "seven"], ["hm"]),
        helper.make_node("Sub", ["seven", "hm"], ["r0"]),
        helper.make_node("Mod", ["r0", "seven"], ["r"]),  # (7 - H % 7) % 7
        helper.make_node("Concat", ["zeros5", "r", "r", "zero1"], ["pads"], axis=0),  # end pads of H and W
        helper.make_node("Pad", ["x", "pads"], ["xp"]),
        helper.make_node("MatMul", ["xp", "w"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "runtime_pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 5, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch", [1, "batch"])
def test_runtime_pad_and_dynamic_batch(batch: int | str) -> None:
    """Padded to 7 x 7 windows; a symbolic batch counts as 1 and still lets the pads fold."""
    model = _runtime_pad_model(batch)
    assert graph_stats(model).node_flops == {"proj": 2 * (1 * 7 * 7 * 8) * 4}
    assert GraphView(model).flops() == graph_stats(model).flops  # the pruning engine reads the same count


def test_unresolvable_shapes_fall_back() -> None:
    """An op ONNX knows nothing of and a data-dependent size: no error; what has a known rank counts, dims as 1."""
    inits = [_w("w1", [16, 32]), _w("w2", [32, 4]), _w("w3", [2, 8])]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="known"),  # [N, 8, 32] -> N counts as 1
        helper.make_node("Mystery", ["h"], ["u"], domain="example.custom"),
        helper.make_node("MatMul", ["u", "w2"], ["v"], name="unknown"),  # no shape at all: counts nothing
        helper.make_node("NonZero", ["mask"], ["nz"]),  # [2, ?]
        helper.make_node("Transpose", ["nz"], ["nzt"], perm=[1, 0]),
        helper.make_node("Cast", ["nzt"], ["nzf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["nzf", "w3"], ["z"], name="data_dependent"),  # [?, 8]
    ]
    graph = helper.make_graph(
        nodes,
        "partial",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [4, 4]),
        ],
        [
            helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    stats = graph_stats(model)
    assert stats.node_flops == {"known": 2 * (8 * 32) * 16, "data_dependent": 2 * 8 * 2}
    assert stats.params == 16 * 32 + 32 * 4 + 2 * 8


def _torch_flops(name: str, size: int, **overrides: object) -> int:
    from models.registry import build_model, model_size

    return model_size(build_model(name, **overrides).eval(), size, name).flops


def test_mobilevit_matches_torch(exported: Callable[..., Path]) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64)))
    ref = _torch_flops("mobilevit_xxs", 64)
    assert abs(graph_stats(model).flops / ref - 1) <= 0.01


def test_swin_matches_torch(exported: Callable[..., Path]) -> None:
    """Swin pads its windows with sizes computed from Shape at run time: whole-graph ONNX inference loses the
    static shapes after that Pad (the old counter counted ~23% of torch's FLOPs at 64, ~83% at 512)."""
    overrides = {"input_size": 64, "decoder_width": 32}
    model = onnx.load(str(exported("swin_t_upernet512", size=64, **overrides)))
    ref = _torch_flops("swin_t_upernet512", 64, **overrides)
    stats = graph_stats(model)
    assert abs(stats.flops / ref - 1) <= 0.02
    assert stats.flops == GraphView(model).flops()
