"""Down-conversion of the dynamo exporter's opset-18 graphs: the adapters onnx's version converter lacks, on small
graphs written in ONNX text, and a q/k-split attention (q/k head channels cut apart from v) exported at every
opset with both exporters."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch

from exporters.export import SUPPORTED_OPSETS, onnx_vs_torch, torch_to_onnx
from exporters.opset import to_opset

LOWER = [op for op in SUPPORTED_OPSETS if op < 18]


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


SPLITS = {
    "equal parts by num_outputs": """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 6] x) => (float[2, 2] a, float[2, 2] b, float[2, 2] c) {
            a, b, c = Split <axis = 1, num_outputs = 3> (x)
        }""",
    "unequal parts by num_outputs (the last one smaller)": """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 7] x) => (float[2, 3] a, float[2, 3] b, float[2, 1] c) {
            a, b, c = Split <axis = 1, num_outputs = 3> (x)
        }""",
    "sizes as an input (q, k and v of unequal widths)": """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 10] x) => (float[2, 3] q, float[2, 3] k, float[2, 4] v) {
            sizes = Constant <value = int64[3] {3, 3, 4}> ()
            q, k, v = Split <axis = -1> (x, sizes)
        }""",
}


@pytest.mark.parametrize("text", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("opset", LOWER)
def test_split_18_converts_to_every_lower_opset(text: str, opset: int) -> None:
    model = onnx.parser.parse_model(text)
    x = np.arange(np.prod([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]), dtype=np.float32)
    x = x.reshape([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    out = to_opset(model, opset)
    assert _opset(out) == opset
    onnx.checker.check_model(out, full_check=True)
    assert all(n.domain == "" for n in out.graph.node)  # nothing left in the parking domain
    for want, got in zip(_run(model, x), _run(out, x), strict=True):
        np.testing.assert_array_equal(want, got)


def test_split_on_an_axis_of_unknown_length_with_unequal_parts_is_refused_clearly() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, N] x) => (float[2, M] a, float[2, K] b) {
            a, b = Split <axis = 1, num_outputs = 2> (x)
        }""")
    with pytest.raises(ValueError, match="unknown length"):
        to_opset(model, 13)


class _QkSplitBlock(torch.nn.Module):
    """A token MLP around timm attention whose q/k keep 4 channels per head and v keeps 8 (what a plan that cut
    them apart rebuilds: ``models.prune_torch.QkSplitAttention``)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import Attention

        from models.prune_torch import QkSplitAttention

        attn = Attention(32, num_heads=4)
        attn.__class__ = QkSplitAttention
        attn.qk_dim = 4
        attn.qkv = torch.nn.Linear(32, 4 * (4 + 4 + 8))
        attn.fused_attn = False
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [1, 32, 4, 4]
        tokens = x.flatten(2).transpose(1, 2)  # [1, 16, 32]
        return self.attn(tokens).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_qk_split_attention_exports_at_every_opset(exporter: str) -> None:
    torch.manual_seed(0)
    model = _QkSplitBlock().eval()
    x = torch.randn(1, 32, 4, 4)
    if exporter == "dynamo":  # one trace, converted down as exporters.export does
        top = torch_to_onnx(model, x, exporter="dynamo", opset=18)
        protos = {op: to_opset(top, op) if op < 18 else top for op in SUPPORTED_OPSETS}
    else:
        protos = {op: torch_to_onnx(model, x, exporter="legacy", opset=op) for op in SUPPORTED_OPSETS}
    for op, proto in protos.items():
        assert _opset(proto) == op
        assert onnx_vs_torch(proto, model, x) < 1e-5, (exporter, op)
