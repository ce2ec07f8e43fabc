"""passes._core.units: discovery of head channels lists every group it starts from, found or skipped with the reason
(never silently), and sees through a relative-position bias computed from constants however deep (SwinV2's: an
MLP over a constant table, gathered, squashed and scaled)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _helpers_prune import input_for, oracle_error, run_ort

from fileformat.plan import QK_SUFFIX
from passes._core.oracle import zero_units
from passes._core.units import find_attention_blocks, find_head_dims
from passes.slice_width import SliceWidthConfig, slice_width


class _DeepBiasAttention(torch.nn.Module):
    """Attention of 4 heads over 16 tokens whose score bias is ``16 * sigmoid(mlp(table))[index]``: a dozen ops from
    constants alone, as transformers' Swinv2 computes its continuous position bias."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(7.0) - 3, torch.arange(7.0) - 3, indexing="ij"), -1)
        self.register_buffer("table", coords.reshape(1, 7, 7, 2) / 3)
        self.register_buffer(
            "index", torch.randint(0, 49, (tokens * tokens,), generator=torch.Generator().manual_seed(0))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [1, 16, 32]
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.mlp(self.table).view(-1, self.heads)[self.index].view(n, n, -1).permute(2, 0, 1)  # [heads, n, n]
        attn = (q @ k.transpose(-2, -1)) * 0.25 + 16 * torch.sigmoid(bias).unsqueeze(0)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


@pytest.fixture(scope="module")
def deep_bias(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("units") / "deep_bias.onnx"
    torch.onnx.export(_DeepBiasAttention().eval(), (torch.randn(1, 16, 32),), str(path), dynamo=False, opset_version=17)
    return onnx.load(str(path))


def test_q_and_k_channels_are_found_behind_a_deep_constant_bias(deep_bias: onnx.ModelProto) -> None:
    units = find_head_dims(deep_bias)
    ids = sorted(u.id.endswith(QK_SUFFIX) for u in units)
    assert ids == [False, True] and all(u.prunable for u in units), [(u.id, u.skip_reason) for u in units]
    keep = {u.id: [0, 3, 5] for u in units}
    out, _ = slice_width(deep_bias, SliceWidthConfig(keep_sets=keep, kind="head_dim"))
    scale = float(np.abs(run_ort(deep_bias, input_for(deep_bias))).max())
    assert oracle_error(deep_bias, out, units, keep, zero_units) <= 1e-5 * scale
    shifted = {uid: [k + 1 for k in kept] for uid, kept in keep.items()}
    assert oracle_error(deep_bias, out, units, shifted, zero_units) > 1e-3 * scale


def test_a_block_that_cannot_be_cut_lists_its_head_channels_with_the_reason(deep_bias: onnx.ModelProto) -> None:
    """The attention probabilities are also a model output (outputs are never cut): the block is skipped, and so
    are its head channels, with that reason (before, they were left out without one)."""
    model = onnx.ModelProto()
    model.CopyFrom(deep_bias)
    soft = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(soft.output[0], onnx.TensorProto.FLOAT, None))
    (block,) = find_attention_blocks(model)
    assert not block.prunable
    units = find_head_dims(model)
    assert [u.id for u in units] == [block.id] and not units[0].prunable
    assert units[0].skip_reason == f"its attention block cannot be cut: {block.skip_reason}"
