"""Helpers of the head/neuron pruning tests: ORT runs, hand-built attention graphs, timm exports, torch plans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from _shared import perturb_, run_ort  # perturb_: the `exported` fixture's own perturbation
from onnx import TensorProto, helper, numpy_helper

ATOL = 1e-4


def input_for(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    dims = [d.dim_value if d.dim_value > 0 else 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def random_keep_sets(units: Sequence[Any], seed: int) -> dict[str, list[int]]:
    """A seeded random non-empty proper-or-full subset per prunable unit."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in units:
        if u.prunable:
            k = int(rng.integers(1, u.count + 1))
            out[u.id] = sorted(rng.choice(u.count, size=k, replace=False).tolist())
    return out


def oracle_error(model: onnx.ModelProto, pruned: onnx.ModelProto, units: Sequence[Any], keep: dict, zero) -> float:
    """Max abs difference between ``pruned`` and ``model`` with the removed units' consuming weights zeroed."""
    zeroed = model
    for u in units:
        if u.id in keep:
            zeroed = zero(zeroed, u, [i for i in range(u.count) if i not in keep[u.id]])
    x = input_for(model)
    return float(np.abs(run_ort(pruned, x) - run_ort(zeroed, x)).max())


def initializer_map(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------------------------------ hand-built graphs
def mha_model(
    *,
    dim: int = 16,
    heads: int = 4,
    tokens: int = 5,
    blocks: int = 1,
    share_proj: bool = False,
    dynamic_batch: bool = False,
    read_head_count: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """timm-style attention blocks (fused qkv, Reshape, Transpose, Split, Squeeze, scale, Softmax, proj) in ONNX.

    ``share_proj``: every block reads block 0's projection weight. ``dynamic_batch``: a symbolic batch and
    reshape shapes built at run time from ``Shape(x)``. ``read_head_count``: the context reshape takes its size
    from ``Shape(scores)[1]`` (the head count) at run time.
    """
    rng = np.random.default_rng(seed)
    hd = dim // heads
    batch: int | str = "batch" if dynamic_batch else 2
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    const("split3", np.array([1, 1, 1], dtype=np.int64))
    const("axis0", np.array([0], dtype=np.int64))
    const("scale", np.array(hd**-0.5, dtype=np.float32))
    x = "x"
    for b in range(blocks):
        p = f"b{b}_"
        wqkv = const(p + "wqkv", rng.standard_normal((dim, 3 * dim)).astype(np.float32) * 0.3)
        bqkv = const(p + "bqkv", rng.standard_normal(3 * dim).astype(np.float32) * 0.1)
        wproj = (
            "b0_wproj"
            if (share_proj and b > 0)
            else const(p + "wproj", rng.standard_normal((dim, dim)).astype(np.float32) * 0.3)
        )
        bproj = const(p + "bproj", rng.standard_normal(dim).astype(np.float32) * 0.1)
        if dynamic_batch:
            nodes += [
                helper.make_node("Shape", [x], [p + "xs"]),
                helper.make_node("Slice", [p + "xs", "axis0", p + "one"], [p + "bsz"]),
            ]
            const(p + "one", np.array([1], dtype=np.int64))
            const(p + "rest5", np.array([tokens, 3, heads, hd], dtype=np.int64))
            const(p + "rest3", np.array([tokens, dim], dtype=np.int64))
            nodes += [
                helper.make_node("Concat", [p + "bsz", p + "rest5"], [p + "shape5"], axis=0),
                helper.make_node("Concat", [p + "bsz", p + "rest3"], [p + "shape3"], axis=0),
            ]
        else:
            const(p + "shape5", np.array([batch, tokens, 3, heads, hd], dtype=np.int64))
            const(p + "shape3", np.array([batch, tokens, dim], dtype=np.int64))
        nodes += [
            helper.make_node("MatMul", [x, wqkv], [p + "qkv0"]),
            helper.make_node("Add", [p + "qkv0", bqkv], [p + "qkv"]),
            helper.make_node("Reshape", [p + "qkv", p + "shape5"], [p + "qkv5"]),  # [B, N, 3, H, hd]
            helper.make_node("Transpose", [p + "qkv5"], [p + "qkvT"], perm=[2, 0, 3, 1, 4]),  # [3, B, H, N, hd]
            helper.make_node("Split", [p + "qkvT", "split3"], [p + "q1", p + "k1", p + "v1"], axis=0),
            helper.make_node("Squeeze", [p + "q1", "axis0"], [p + "q"]),
            helper.make_node("Squeeze", [p + "k1", "axis0"], [p + "k"]),
            helper.make_node("Squeeze", [p + "v1", "axis0"], [p + "v"]),
            helper.make_node("Mul", [p + "q", "scale"], [p + "qs"]),
            helper.make_node("Transpose", [p + "k"], [p + "kT"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "qs", p + "kT"], [p + "s"]),  # [B, H, N, N]
            helper.make_node("Softmax", [p + "s"], [p + "a"], axis=-1),
            helper.make_node("MatMul", [p + "a", p + "v"], [p + "o"]),  # [B, H, N, hd]
            helper.make_node("Transpose", [p + "o"], [p + "oT"], perm=[0, 2, 1, 3]),  # [B, N, H, hd]
        ]
        if read_head_count:  # [B, N, H, hd] -> [B, N, Shape(s)[1] * hd] with the head count read at run time
            const(p + "one_idx", np.array([1], dtype=np.int64))
            const(p + "hd", np.array([hd], dtype=np.int64))
            const(p + "bn", np.array([batch, tokens], dtype=np.int64))
            nodes += [
                helper.make_node("Shape", [p + "s"], [p + "ss"]),
                helper.make_node("Gather", [p + "ss", p + "one_idx"], [p + "h"], axis=0),
                helper.make_node("Mul", [p + "h", p + "hd"], [p + "c"]),
                helper.make_node("Concat", [p + "bn", p + "c"], [p + "shape3r"], axis=0),
                helper.make_node("Reshape", [p + "oT", p + "shape3r"], [p + "o3"]),
            ]
        else:
            nodes.append(helper.make_node("Reshape", [p + "oT", p + "shape3"], [p + "o3"]))
        nodes += [
            helper.make_node("MatMul", [p + "o3", wproj], [p + "pr0"]),
            helper.make_node("Add", [p + "pr0", bproj], [p + "pr"]),
            helper.make_node("Add", [x, p + "pr"], [p + "out"]),
        ]
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mha",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, tokens, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv: a model with neither attention nor MLP."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ------------------------------------------------------------------------------------------------- torch side
def export_with_weight_map(net: torch.nn.Module, size: int, *, opset: int = 17, fused: bool = True) -> onnx.ModelProto:
    """Export a timm/torch model (legacy exporter) with the toolchain's weight map, so unit ids are torch paths."""
    from exporters.export import set_fused_attention, torch_to_onnx
    from exporters.weight_map import build_weight_map
    from fileformat.metadata import write_metadata

    set_fused_attention(net, fused)
    net.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    proto = torch_to_onnx(net, x, exporter="legacy", opset=opset)
    write_metadata(proto, {"weight_map": build_weight_map(proto, net)})
    return proto


def apply_plan_torch_(net: torch.nn.Module, plan: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a plan's structure in torch, in place: slice every tensor of ``plan["slices"]`` (torch layout,
    original-model indices) and set ``num_heads``/``attn_dim`` of the attention modules of ``plan["heads"]``."""
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, axes in plan["slices"].items():
            p = params[name]
            t = p.data
            for axis, idx in axes.items():
                t = t.index_select(int(axis), torch.tensor(idx, dtype=torch.long))
            p.data = t.contiguous()
    for path, entry in plan.get("heads", {}).items():
        attn = net.get_submodule(path)
        attn.num_heads = len(entry["kept"])
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = attn.num_heads * attn.head_dim
    for mod in net.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.out_features, mod.in_features = mod.weight.shape
    return net


_VIT: dict[str, tuple[torch.nn.Module, onnx.ModelProto]] = {}


def vit_tiny() -> tuple[torch.nn.Module, onnx.ModelProto]:
    """timm ViT-tiny (12 blocks, 3 heads of 64, GELU MLP 768) at 64x64, perturbed, exported once per session."""
    if "vit" not in _VIT:
        import timm

        net = perturb_(timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10), 0).eval()
        _VIT["vit"] = (net, export_with_weight_map(net, 64, opset=17, fused=False))
    return _VIT["vit"]
