"""Attention and MLP shapes of the models users bring, each held to the zeroing oracle.

Small torch modules written the way their libraries write them (FastViT / EfficientFormer 1x1-conv MLPs with a
BatchNorm, SegFormer's MixFFN, LeViT's BatchNorm inside qkv and the MLP, SwinV2's cosine attention with a per-head
logit scale, torch's ``nn.MultiheadAttention``, SegFormer's one-head first stage, gated SwiGLU MLPs with one fc1
or two), exported by both torch
exporters, with fresh (untouched) and perturbed weights. Every test checks that units are found and cut, and that
the cut model equals the unpruned model with the removed units zeroed (the consuming weights of heads and neurons;
every weight slice of head channels), while a shifted choice of units does not.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from _helpers_prune import run_ort
from _shared import perturb_
from torch import nn

from passes._core.oracle import zero_units
from passes._core.prune import UnitPruneConfig, prune_units
from passes._core.units import find_mlps, find_units, not_mlps
from passes.compress import CompressConfig, compress
from passes.prune_heads import PruneHeadsConfig, prune_heads, zero_heads
from passes.slice_neurons import SliceNeuronsConfig, slice_neurons, zero_neurons

TOKENS, DIM = 16, 32


class ConvMlp(nn.Module):
    """FastViT / EfficientFormer Meta4D MLP: 1x1 conv -> GELU -> BatchNorm -> 1x1 conv, residual (NCHW)."""

    def __init__(self, c: int = 16, hidden: int = 48) -> None:
        super().__init__()
        self.fc1, self.act, self.norm, self.fc2 = (
            nn.Conv2d(c, hidden, 1),
            nn.GELU(),
            nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, c, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.norm(self.act(self.fc1(x))))


class MixFfn(nn.Module):
    """SegFormer's MixFFN: Linear -> tokens to a map -> depthwise 3x3 -> back to tokens -> GELU -> Linear."""

    def __init__(self, c: int = DIM, hidden: int = 64, side: int = 4) -> None:
        super().__init__()
        self.side = side
        self.fc1, self.dw, self.fc2 = (
            nn.Linear(c, hidden),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.Linear(hidden, c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.fc1(x)
        h = h.transpose(1, 2).reshape(b, -1, self.side, self.side)  # [B, N, H] -> [B, H, side, side]
        h = self.dw(h).flatten(2).transpose(1, 2)  # -> [B, N, H]
        return x + self.fc2(F.gelu(h))


class LevitAttention(nn.Module):
    """LeViT: qkv Linear + BatchNorm1d (per-head [q k v] layout, values ``v_ratio`` times wider than the keys, as
    timm's ``attn_ratio``), Hardswish before the projection; BN MLP."""

    def __init__(self, c: int = DIM, heads: int = 4, d: int = 8, v_ratio: int = 1, sliced: bool = False) -> None:
        super().__init__()
        self.heads, self.d, self.dv, self.sliced = heads, d, d * v_ratio, sliced
        width = heads * (2 * d + self.dv)
        self.qkv, self.qkv_bn = nn.Linear(c, width, bias=False), nn.BatchNorm1d(width)
        self.proj = nn.Linear(heads * self.dv, c)
        self.fc1, self.mlp_bn, self.fc2 = nn.Linear(c, 2 * c, bias=False), nn.BatchNorm1d(2 * c), nn.Linear(2 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv_bn(self.qkv(x).flatten(0, 1)).reshape(b, n, self.heads, -1)  # [B, N, H, 2d + dv]
        if self.sliced:  # indexing instead of split: three Slice nodes in the ONNX graph
            q, k, v = qkv[..., : self.d], qkv[..., self.d : 2 * self.d], qkv[..., 2 * self.d :]
        else:
            q, k, v = qkv.split([self.d, self.d, self.dv], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, N, d]
        attn = ((q @ k.transpose(-2, -1)) * self.d**-0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.dv)
        x = x + self.proj(F.hardswish(y))
        h = F.hardswish(self.mlp_bn(self.fc1(x).flatten(0, 1))).reshape(b, n, -1)
        return x + self.fc2(h)


class CosineAttention(nn.Module):
    """SwinV2: q and k L2-normalised over head_dim (ReduceL2), scores times a per-head clamped exp(logit_scale)."""

    def __init__(self, c: int = DIM, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.d = heads, c // heads
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.d).permute(2, 0, 3, 1, 4)  # [3, B, H, N, d]
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.proj(y)


class IndexedQkvAttention(nn.Module):
    """A fused qkv whose parts are taken by indexing (``qkv[0]``, ``qkv[1]``, ``qkv[2]``: Gather in the graph), as
    older timm and many hand-written blocks do."""

    def __init__(self, c: int = DIM, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.d = heads, c // heads
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = (((q @ k.transpose(-2, -1)) * self.d**-0.5).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.proj(y)


class OneHeadAttention(nn.Module):
    """SegFormer's first stage (PVTv2 alike): one head, q and a fused kv projection, keys and values from a strided
    conv with a LayerNorm (spatial reduction); no head axis to follow, so q and v seed the head channels."""

    def __init__(self, c: int = DIM) -> None:
        super().__init__()
        self.q, self.kv, self.proj = nn.Linear(c, c), nn.Linear(c, 2 * c), nn.Linear(c, c)
        self.sr, self.norm = nn.Conv2d(c, c, 2, stride=2), nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = math.isqrt(n)
        q = self.q(x).reshape(b, n, 1, c).permute(0, 2, 1, 3)  # [B, 1, N, c]
        r = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, side, side)).reshape(b, c, -1).transpose(1, 2))
        k, v = self.kv(r).reshape(b, -1, 2, 1, c).permute(2, 0, 3, 1, 4).unbind(0)  # [B, 1, M, c] each
        attn = ((q @ k.transpose(-2, -1)) * c**-0.5).softmax(-1)
        return x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwiGlu(nn.Module):
    """A gated MLP (timm's SwiGLU, EVA-02, DINOv2-g): ``fc2(silu(fc1_g(x)) * fc1_x(x))``; ``packed``: one fc1 of
    twice the width, halved by ``chunk`` (timm's GluMlp / SwiGLUPacked)."""

    def __init__(self, c: int = DIM, hidden: int = 2 * DIM, packed: bool = False) -> None:
        super().__init__()
        self.packed = packed
        if packed:
            self.fc1 = nn.Linear(c, 2 * hidden)
        else:
            self.fc1_g, self.fc1_x = nn.Linear(c, hidden), nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            g, v = self.fc1(x).chunk(2, dim=-1)
        else:
            g, v = self.fc1_g(x), self.fc1_x(x)
        return x + self.fc2(F.silu(g) * v)


class TorchMha(nn.Module):
    """torch's nn.MultiheadAttention (fused in_proj) followed by an MLP, as torchvision's ViT encoder block."""

    def __init__(self, c: int = DIM, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(x)))


def _image_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ConvMlp(), ConvMlp())


def _tokens(block: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(block(), block())


# name: (builder, input shape, {unit kind: units expected to be cut})
PATTERNS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], dict[str, int]]] = {
    "conv_mlp": (_image_net, (1, 3, 8, 8), {"neurons": 2}),
    "mixffn": (_tokens(MixFfn), (2, TOKENS, DIM), {"neurons": 2}),
    "levit": (_tokens(LevitAttention), (2, TOKENS, DIM), {"heads": 2, "neurons": 2, "head_dim": 4}),
    # values twice as wide as the keys: one Split into unequal parts; the q/k and the v channels are two groups
    "levit_wide_v": (_tokens(lambda: LevitAttention(v_ratio=2)), (2, TOKENS, DIM), {"heads": 2, "head_dim": 4}),
    "levit_sliced": (
        _tokens(lambda: LevitAttention(v_ratio=2, sliced=True)),
        (2, TOKENS, DIM),
        {"heads": 2, "head_dim": 4, "neurons": 2},
    ),
    # head channels pass the L2 norms of q and k: a removed channel is 0 in the oracle and adds nothing to them
    "swinv2_cosine": (_tokens(CosineAttention), (2, TOKENS, DIM), {"heads": 2, "head_dim": 4}),
    # q/k channels apart from v's behind a fused qkv taken apart by indexing (the canonical form splits it)
    "indexed_qkv": (_tokens(IndexedQkvAttention), (2, TOKENS, DIM), {"heads": 2, "head_dim": 4}),
    "torch_mha": (_tokens(TorchMha), (2, TOKENS, DIM), {"heads": 2, "neurons": 2}),
    "swiglu": (_tokens(SwiGlu), (2, TOKENS, DIM), {"neurons": 2}),
    "swiglu_packed": (_tokens(lambda: SwiGlu(packed=True)), (2, TOKENS, DIM), {"neurons": 2}),
    "one_head": (_tokens(OneHeadAttention), (2, TOKENS, DIM), {"head_dim": 4}),
}


def _export(net: nn.Module, shape: tuple[int, ...], exporter: str) -> onnx.ModelProto:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA fast path has no ONNX export
    try:
        if exporter == "dynamo":
            return torch.onnx.export(net, (x,), dynamo=True, verbose=False).model_proto
        buf = io.BytesIO()
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17)
        return onnx.load_from_string(buf.getvalue())
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


_CACHE: dict[tuple[str, str, str], onnx.ModelProto] = {}


def _model(name: str, exporter: str, variant: str) -> onnx.ModelProto:
    key = (name, exporter, variant)
    if key not in _CACHE:
        build, shape, _ = PATTERNS[name]
        torch.manual_seed(0)
        net = build().eval()
        if variant == "perturbed":
            perturb_(net, seed=1)
        with torch.no_grad():
            _CACHE[key] = _export(net, shape, exporter)
    return _CACHE[key]


def _input(model: onnx.ModelProto) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(5).standard_normal(dims).astype(np.float32)


@pytest.mark.parametrize("variant", ["fresh", "perturbed"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_is_cut_exactly(name: str, exporter: str, variant: str) -> None:
    model = _model(name, exporter, variant)
    x = _input(model)
    ref = run_ort(model, x)
    scale = float(np.abs(ref).max())
    for kind, expected in PATTERNS[name][2].items():
        units = find_units(model, kind)
        prunable = [u for u in units if u.prunable]
        assert len(prunable) == expected, [(u.id, u.skip_reason) for u in units]
        keep = {u.id: list(range(0, u.count, 2)) for u in prunable}  # every other unit
        shifted = {u.id: list(range(1, u.count, 2)) for u in prunable}
        if kind == "head_dim":
            pruned, report = prune_units(model, kind, UnitPruneConfig(keep_sets=keep), kind)
            zero: Callable = zero_units
        else:
            run, zero = (prune_heads, zero_heads) if kind == "heads" else (slice_neurons, zero_neurons)
            cfg = (PruneHeadsConfig if kind == "heads" else SliceNeuronsConfig)(keep_sets=keep)
            pruned, report = run(model, cfg)
        assert report.modified and report.params_after < report.params_before
        zeroed, control = model, model
        for u in prunable:
            zeroed = zero(zeroed, u, [i for i in range(u.count) if i not in keep[u.id]])
            control = zero(control, u, [i for i in range(u.count) if i not in shifted[u.id]])
        got = run_ort(pruned, x)
        assert np.abs(got - run_ort(zeroed, x)).max() <= 1e-4 * max(scale, 1.0), kind
        assert np.abs(got - run_ort(control, x)).max() > 1e-3 * max(scale, 1.0), kind


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_unequal_parts_cost_what_the_written_model_counts(exporter: str) -> None:
    # the fused projection's axis is [q | k | v] per head: cutting q/k channels and v channels scales it as
    # (2 k_qk + k_v) / (2 d + dv), one sum, not a product of two fractions; the budget's estimate is exact
    model = _model("levit_wide_v", exporter, "perturbed")
    _, report = compress(model, CompressConfig(target_flops=0.8, units=("head_dim",)))
    budget = report.extra["budget"]
    assert budget["achieved"] < 0.85
    assert abs(budget["estimated"] - budget["achieved"]) < 1e-9, budget


class GatedByInput(nn.Module):
    """``fc2(silu(fc1(x)) * x)``: the hidden activations are gated by the block's input, not by a linear layer."""

    def __init__(self, c: int = DIM) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(x)) * x)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_gate_that_is_no_linear_layer_is_not_an_mlp(exporter: str) -> None:
    # cutting the hidden axis would cut the block's input (the residual stream) too: not an MLP's neurons
    torch.manual_seed(0)
    model = _export(GatedByInput().eval(), (2, TOKENS, DIM), exporter)
    assert find_mlps(model) == []
    assert any("mixes it with another computed tensor" in why for _, why in not_mlps(model))
