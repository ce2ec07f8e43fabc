"""ONNX -> torch: a pruned file's weights loaded into the torch model its plan rebuilds (through the exporter's
``vitseg.weight_map``: Linear weights transposed back, BatchNorms folded into a conv by the legacy exporter loaded
as the identity scheme the notes of :mod:`models.prune_torch` give), and the rebuilt student of a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fileformat.errors import PassError
from fileformat.io import load_model
from fileformat.metadata import read_metadata, weight_sources
from fileformat.plan import read_plan
from models.registry import ModelConfig, Segmentor
from models.surgery import apply_plan
from models.torch_plan import PlanError

__all__ = ["LoadSummary", "load_onnx_weights", "load_pruned", "student_from_onnx"]


@dataclass
class LoadSummary:
    """What :func:`load_onnx_weights` did: tensors loaded, BatchNorms set to the folded identity scheme."""

    loaded: list[str] = field(default_factory=list)
    folded_bn: list[str] = field(default_factory=list)


def load_onnx_weights(model: nn.Module, proto: onnx.ModelProto, weight_map: dict[str, Any]) -> LoadSummary:
    """Copy the initializers of ``proto`` into ``model`` (in place) through ``weight_map``.

    ``weight_map`` is ``{initializer: {"param", "transposed", "folded_bn", "alts"}}`` (``exporters.weight_map``). A
    transposed entry is ``W^T`` (Linear, ``[in, out]``). An initializer the exporter stored once for several equal
    torch tensors (``alts``: the zero biases of an untrained model) fills each of them whose shape matches, after
    every tensor with its own initializer is loaded, and never the statistics of a BatchNorm folded into a conv. A
    BatchNorm whose bias is loaded but whose weight and running statistics are not (folded by the exporter) becomes
    the identity scheme of the module docstring. Every floating-point parameter or buffer must end up set;
    otherwise :class:`PlanError` names the missing ones.
    """
    inits = {i.name: i for i in proto.graph.initializer}
    state = dict(model.named_parameters())
    state.update({k: v for k, v in model.named_buffers() if v.is_floating_point()})
    summary = LoadSummary()
    loaded: dict[str, str] = {}  # torch tensor -> the initializer that set it, or "folded"
    present = [(name, weight_sources(entry)) for name, entry in weight_map.items() if name in inits]
    with torch.no_grad():
        _load_own(inits, state, present, loaded)  # removed initializers (a whole unit cut away) are checked below
        folded_convs = _folded_convs(present)
        _load_shared(inits, state, present, loaded, folded_convs)
        summary.folded_bn = _fold_batchnorms(model, loaded, folded_convs)
    missing = [k for k in state if k not in loaded]
    if missing:
        raise PlanError(
            f"the ONNX file holds no weight for {len(missing)} tensors of the rebuilt model (e.g. "
            f"{', '.join(missing[:4])}); its weight_map is incomplete (a pass renamed initializers without updating "
            "vitseg.weight_map?)."
        )
    summary.loaded = sorted(k for k, v in loaded.items() if v != "folded")
    return summary


Sources = list[tuple[str, list[dict[str, Any]]]]


def _torch_value(inits: dict[str, onnx.TensorProto], init_name: str, src: dict[str, Any]) -> torch.Tensor:
    arr = numpy_helper.to_array(inits[init_name]).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.T if src.get("transposed") else arr))


def _load_own(
    inits: dict[str, onnx.TensorProto], state: dict[str, torch.Tensor], present: Sources, loaded: dict[str, str]
) -> None:
    """Every tensor with an initializer of its own, its shape checked."""
    for init_name, sources in present:
        if len(sources) != 1:
            continue
        src = sources[0]
        param = src["param"]
        if param not in state:
            raise PlanError(
                f"weight_map: initializer {init_name!r} maps to {param!r}, which is not a tensor of the rebuilt "
                "model; the file's metadata does not describe this configuration."
            )
        value, target = _torch_value(inits, init_name, src), state[param]
        if tuple(value.shape) != tuple(target.shape):
            raise PlanError(
                f"initializer {init_name!r} has shape {list(value.shape)} (torch layout) but {param} of the "
                f"rebuilt model is {list(target.shape)}: the file's plan does not describe its weights."
            )
        if param in loaded and not torch.equal(target, value):
            raise PlanError(f"{param} is given twice with different values ({loaded[param]}, {init_name}).")
        target.copy_(value)
        loaded[param] = init_name


def _folded_convs(present: Sources) -> dict[str, str]:
    """``{BatchNorm path: the weight of the conv it was folded into}``."""
    out: dict[str, str] = {}
    for _, sources in present:
        for src in sources:
            bn, param = src.get("folded_bn"), str(src["param"])
            if bn and param.endswith(".weight") and not param.startswith(bn + "."):
                out[bn] = param
    return out


def _load_shared(
    inits: dict[str, onnx.TensorProto],
    state: dict[str, torch.Tensor],
    present: Sources,
    loaded: dict[str, str],
    folded_convs: dict[str, str],
) -> None:
    """Equal tensors stored once: fill what is still missing where the shape matches, never a folded BatchNorm's
    statistics."""
    folded_stats = {f"{bn}.{s}" for bn in folded_convs for s in ("weight", "running_mean", "running_var")}
    for init_name, sources in present:
        if len(sources) == 1:
            continue
        for src in sources:
            param = src["param"]
            if param not in state or param in loaded or param in folded_stats:
                continue
            value = _torch_value(inits, init_name, src)
            if tuple(value.shape) == tuple(state[param].shape):
                state[param].copy_(value)
                loaded[param] = init_name


def _fold_batchnorms(model: nn.Module, loaded: dict[str, str], folded_convs: dict[str, str]) -> list[str]:
    """Each BatchNorm whose bias is loaded but whose weight and statistics are not becomes the identity scheme (its
    conv's own bias zeroed: the folded bias holds it). Returns their paths."""
    folded = []
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.modules.batchnorm._NormBase):
            continue
        pre = f"{path}."
        stats = [pre + "weight", pre + "running_mean", pre + "running_var"]
        if any(s in loaded for s in stats):
            continue
        if path in folded_convs and pre + "bias" not in loaded:
            # folded into its conv with a zero bias, which the dynamo exporter's optimiser then removed
            mod.bias.zero_()
            loaded[pre + "bias"] = "folded"
        if pre + "bias" not in loaded:
            continue
        mod.weight.fill_(1.0)
        mod.running_mean.zero_()
        mod.running_var.fill_(1.0 - mod.eps)  # sqrt(var + eps) == 1 exactly in float32
        for s in stats:
            loaded[s] = "folded"
        conv_w = folded_convs.get(path)
        if conv_w is not None:
            conv = model.get_submodule(conv_w.rsplit(".", 1)[0])
            if getattr(conv, "bias", None) is not None and conv_w[:-6] + "bias" not in loaded:
                conv.bias.zero_()  # the folded bias b' already holds it
                loaded[conv_w[:-6] + "bias"] = "folded"
        folded.append(path)
    return folded


def load_pruned(path: str | Path) -> onnx.ModelProto:
    """The model file, its failures to load as :class:`PlanError`."""

    try:
        return load_model(path)
    except PassError as exc:
        raise PlanError(str(exc)) from exc


def student_from_onnx(path: str | Path) -> tuple[Segmentor, dict[str, Any], dict[str, Any]]:
    """Rebuild the pruned torch model of an ONNX file: ``(model in eval mode, plan, metadata)``.

    Builds ``vitseg.config``'s model, applies ``vitseg.plan`` (:func:`apply_plan`) and loads the file's weights
    (:func:`load_onnx_weights`). The result reproduces the file's outputs (float32 noise; see
    :func:`check_roundtrip`).
    """
    proto = load_pruned(path)
    meta = read_metadata(proto)
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("weight_map"), dict):
        raise PlanError(
            f"{path}: no vitseg.config / vitseg.weight_map metadata; only files written by exporters.export (and "
            "the passes) can be rebuilt in torch."
        )
    try:
        config = ModelConfig.from_dict(meta["config"])
        model = Segmentor(config)
    except Exception as exc:
        raise PlanError(f"{path}: cannot build the recorded configuration {meta['config']!r} ({exc}).") from exc
    plan = read_plan(proto)
    model = apply_plan(model, plan)
    load_onnx_weights(model, proto, meta["weight_map"])
    model.eval()
    return model, plan, meta
