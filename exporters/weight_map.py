"""Which torch tensor each ONNX initializer came from.

Both torch exporters drop the names of transposed Linear weights (stored ``[in, out]``), the legacy exporter folds
BatchNorm into the preceding Conv (new tensors with generated names) and merges equal initializers. Names alone
cannot say where a weight came from, so the map is built by value: each float initializer is matched against every
parameter and buffer of the torch model, their transposes, and the Conv+BN folds
``W' = W * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fileformat.metadata import make_entry


@dataclass(frozen=True)
class _Candidate:
    name: str
    transposed: bool
    folded_bn: str | None
    value: np.ndarray


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """(conv name, conv, bn name, bn) for each Conv2d registered right before a BatchNorm2d in the same parent."""
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (n1, m1), (n2, m2) in zip(children, children[1:]):
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + n1, m1, prefix + n2, m2))
    return pairs


def _candidates(model: nn.Module) -> list[_Candidate]:
    out: list[_Candidate] = []
    tensors = dict(model.named_parameters())
    tensors.update({k: v for k, v in model.named_buffers() if v.is_floating_point()})
    for name, t in tensors.items():
        arr = t.detach().cpu().numpy()
        out.append(_Candidate(name, False, None, arr))
        if arr.ndim == 2:
            out.append(_Candidate(name, True, None, arr.T))
    with torch.no_grad():
        for conv_name, conv, bn_name, bn in _conv_bn_pairs(model):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight * scale.reshape(-1, 1, 1, 1)
            b = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                b = b + conv.bias * scale
            out.append(_Candidate(conv_name + ".weight", False, bn_name, w.numpy()))
            out.append(_Candidate(bn_name + ".bias", False, bn_name, b.numpy()))
    return out


def build_weight_map(proto: onnx.ModelProto, model: nn.Module) -> dict[str, dict[str, object]]:
    """Map each float initializer of ``proto`` with more than one element to its torch source.

    Returns ``{initializer: {"param": torch name, "transposed": bool, "folded_bn": bn module name or None}}``.
    Exact value matches (the same name first), else Conv+BN folds within float32 rounding. Every match after the
    first is listed under ``"alts"`` (see :func:`fileformat.metadata.weight_sources`): the exporters store equal
    tensors once. Initializers that are not weights (pooling matrices, scale constants) are left out.
    """
    cands = _candidates(model)
    # a graph without BatchNormalization nodes had every BatchNorm folded into its conv: their statistics and
    # scales are in no initializer, whatever values they share with one (1 and 0 in an untrained model)
    all_folded = not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if all_folded:
        gone = {f"{bn}.{s}" for _, _, bn, _ in _conv_bn_pairs(model) for s in ("weight", "running_mean", "running_var")}
        cands = [c for c in cands if c.name not in gone or c.folded_bn is not None]
    by_shape: dict[tuple[int, ...], list[_Candidate]] = {}
    for c in cands:
        by_shape.setdefault(tuple(c.value.shape), []).append(c)
    result: dict[str, dict[str, object]] = {}
    # the dynamo exporter keeps some weights (the zero bias of a conv it folded a BatchNorm into) in Constant nodes;
    # the passes turn those into initializers of the same name
    constants = [
        n.attribute[0].t
        for n in proto.graph.node
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
    ]
    for n, t in zip([n for n in proto.graph.node if n.op_type == "Constant"], constants):
        t.name = t.name or n.output[0]
    for init in list(proto.graph.initializer) + constants:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        arr = numpy_helper.to_array(init).astype(np.float32)
        if arr.size <= 1:
            continue
        pool = by_shape.get(tuple(arr.shape), [])
        exact = [c for c in pool if c.folded_bn is None and np.array_equal(c.value, arr)]
        folds = [c for c in pool if c.folded_bn is not None and np.allclose(c.value, arr, rtol=1e-5, atol=1e-6)]
        # a name is only trusted with equal values: the dynamo exporter folds BN into a conv weight and keeps its name
        matches = exact + folds if all_folded else (exact or folds)
        matches.sort(key=lambda c: c.name != init.name)  # stable: the tensor's own name first, if it kept one
        if matches:
            # the exporter merges equal tensors (zero biases of an untrained model): one initializer, several sources
            result[init.name] = make_entry(
                [{"param": c.name, "transposed": c.transposed, "folded_bn": c.folded_bn} for c in matches]
            )
    return result
