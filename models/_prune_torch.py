"""The implementation of :mod:`models.prune_torch` (read its notes): torch and timm are imported here, not in the
module a user runs, so ``python -m models.prune_torch --help`` answers at once."""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from fileformat.metadata import weight_sources
from fileformat.plan import QK_SUFFIX, check_indices
from fileformat.plan import normalize_plan as _normalize_plan
from models.registry import ModelConfig, Segmentor

log = logging.getLogger(__name__)

__all__ = [
    "PlanError",
    "RoundTripReport",
    "apply_plan",
    "check_roundtrip",
    "load_onnx_weights",
    "normalize_plan",
    "student_from_onnx",
]


class PlanError(ValueError):
    """A plan (or pruned ONNX file) that does not fit the model configuration; the message says where and why."""


# ---------------------------------------------------------------------------------------------- plan parsing

Slices = dict[str, dict[int, list[int]]]


def _indices(where: str, kept: Any, total: int) -> list[int]:
    return check_indices(where, kept, total, error=PlanError)


def normalize_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Check the plan's container format (version, sections); a deep copy with all sections present."""
    return _normalize_plan(plan, error=PlanError)


def _module(model: nn.Module, path: str, section: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise PlanError(
            f"plan {section}: {path!r} is not a module of this model ({model.config.name}); the plan was made "
            "for another configuration."
        ) from None


def _attention_parts(model: nn.Module, path: str) -> tuple[nn.Module, nn.Linear, nn.Linear, int, int]:
    """(module, qkv, proj, num_heads, head_dim) of a fused-qkv multi-head attention module (timm's Attention)."""
    attn = _module(model, path, "heads")
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    if not (hasattr(attn, "num_heads") and isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        raise PlanError(
            f"plan heads: {path!r} is a {type(attn).__name__}, not a multi-head attention with a fused qkv "
            "projection (num_heads, qkv, proj)."
        )
    heads = int(attn.num_heads)
    head_dim = int(getattr(attn, "head_dim", qkv.out_features // 3 // heads))
    return attn, qkv, proj, heads, head_dim


def _merge_derived(slices: Slices, name: str, axis: int, kept: list[int], source: str) -> None:
    """Add a slice implied by a heads/neurons entry, or check it against the one the plan lists."""
    have = slices.setdefault(name, {}).get(axis)
    if have is None:
        slices[name][axis] = kept
    elif have != kept:
        raise PlanError(
            f"plan slices {name} axis {axis} keeps {_short(have)} but {source} implies {_short(kept)}: "
            "the plan is inconsistent."
        )


def _short(idx: Sequence[int]) -> str:
    idx = list(idx)
    return f"{len(idx)} indices {idx[:6]}{'...' if len(idx) > 6 else ''}"


def _collect_slices(model: nn.Module, plan: dict[str, Any]) -> tuple[Slices, dict[str, list[int]]]:
    """All tensor slices of the plan (explicit and implied by heads/neurons), validated against ``model``.

    Returns ``(slices, heads)``: ``{tensor: {axis: kept}}`` and ``{attention path: kept heads}``.
    """
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    slices: Slices = {}
    for name, axes in plan["slices"].items():
        if name not in tensors:
            near = [t for t in tensors if t.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]][:3]
            raise PlanError(
                f"plan slices: {name!r} is not a parameter or buffer of {model.config.name}"
                + (f" (e.g. {', '.join(near)})" if near else "")
                + "; the plan was made for another configuration."
            )
        if not isinstance(axes, dict) or not axes:
            raise PlanError(f"plan slices {name}: expected {{axis: [kept indices]}}, got {axes!r}.")
        shape = tuple(tensors[name].shape)
        for axis_key, kept in axes.items():
            try:
                axis = int(axis_key)
            except (TypeError, ValueError):
                raise PlanError(f"plan slices {name}: axis {axis_key!r} is not an integer.") from None
            if not 0 <= axis < len(shape):
                raise PlanError(f"plan slices {name}: axis {axis} out of range for shape {list(shape)}.")
            slices.setdefault(name, {})[axis] = _indices(f"plan slices {name} axis {axis}", kept, shape[axis])

    heads: dict[str, list[int]] = {}
    for path, entry in plan["heads"].items():
        attn, qkv, proj, total, head_dim = _attention_parts(model, path)
        if not isinstance(entry, dict) or "kept" not in entry:
            raise PlanError(f"plan heads {path}: expected {{'kept': [...], 'total': N}}, got {entry!r}.")
        if int(entry.get("total", total)) != total:
            raise PlanError(f"plan heads {path}: the plan says {entry['total']} heads, the model has {total}.")
        kept = _indices(f"plan heads {path}", entry["kept"], total)
        heads[path] = kept
        dims, qk_dims = _head_dims(plan, path, head_dim), _head_dims(plan, path + QK_SUFFIX, head_dim, path)
        # fused qkv rows are [3, heads, head_dim] flattened: row = part * total * head_dim + h * head_dim + d
        cols = [h * head_dim + d for h in kept for d in dims]
        qk = [h * head_dim + d for h in kept for d in qk_dims]
        rows = [p * total * head_dim + c for p, part in ((0, qk), (1, qk), (2, cols)) for c in part]
        src = f"plan heads {path} (kept {kept} of {total})"
        _merge_derived(slices, f"{path}.qkv.weight", 0, rows, src)
        if qkv.bias is not None:
            _merge_derived(slices, f"{path}.qkv.bias", 0, rows, src)
        _merge_derived(slices, f"{path}.proj.weight", 1, cols, src)

    for path, entry in plan["neurons"].items():
        mlp = _module(model, path, "neurons")
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            # an MLP the graph shows but no one torch module holds (a 1x1-conv pair across two blocks): the plan's
            # explicit slices of its tensors, validated above, are the cut
            if any(name.startswith(path + ".") for name in slices):
                continue
            raise PlanError(f"plan neurons: {path!r} is a {type(mlp).__name__}, not an MLP with fc1/fc2 Linears.")
        if not isinstance(entry, dict) or "kept" not in entry:
            raise PlanError(f"plan neurons {path}: expected {{'kept': [...], 'total': N}}, got {entry!r}.")
        total = fc1.out_features
        if int(entry.get("total", total)) != total:
            raise PlanError(f"plan neurons {path}: the plan says {entry['total']} neurons, the model has {total}.")
        kept = _indices(f"plan neurons {path}", entry["kept"], total)
        src = f"plan neurons {path}"
        _merge_derived(slices, f"{path}.fc1.weight", 0, kept, src)
        if fc1.bias is not None:
            _merge_derived(slices, f"{path}.fc1.bias", 0, kept, src)
        _merge_derived(slices, f"{path}.fc2.weight", 1, kept, src)

    for path, entry in plan["channels"].items():
        mod = _module(model, path, "channels")
        conv = mod if isinstance(mod, nn.Conv2d) else getattr(mod, "conv", None)
        if conv is None and isinstance(mod, nn.Sequential) and len(mod) and isinstance(mod[0], nn.Conv2d):
            conv = mod[0]
        if not isinstance(conv, nn.Conv2d) or not isinstance(entry, dict) or "kept" not in entry:
            raise PlanError(f"plan channels: {path!r} must name a Conv2d (or conv block) with {{'kept': [...]}}.")
        conv_name = path if conv is mod else next(n for n, m in model.named_modules() if m is conv)
        kept = _indices(f"plan channels {path}", entry["kept"], conv.out_channels)
        have = slices.get(f"{conv_name}.weight", {}).get(0)
        if have is None or have != kept:
            raise PlanError(
                f"plan channels {path} keeps {_short(kept)} but slices {conv_name}.weight axis 0 "
                f"{'is absent' if have is None else 'keeps ' + _short(have)}: the plan is inconsistent."
            )
    return slices, heads


def _head_dims(plan: dict[str, Any], path: str, head_dim: int, default: str | None = None) -> list[int]:
    """The channels each head of attention ``path`` keeps (``plan["head_dim"]``; those of entry ``default`` when
    there is none for ``path``, and all when there is neither). ``<attention>`` names the v channels (and the q/k
    channels with them), ``<attention>#qk`` the q/k channels where a pass cut them apart from v."""
    entry = plan["head_dim"].get(path)
    if entry is None:
        return _head_dims(plan, default, head_dim) if default is not None else list(range(head_dim))
    if not isinstance(entry, dict) or "kept" not in entry or int(entry.get("total", head_dim)) != head_dim:
        raise PlanError(f"plan head_dim {path}: expected {{'kept': [...], 'total': {head_dim}}}, got {entry!r}.")
    return _indices(f"plan head_dim {path}", entry["kept"], head_dim)


# ------------------------------------------------------------------------------------------- applying a plan


def _get(slices: Slices, name: str, axis: int, size: int) -> list[int]:
    """Kept indices of ``name`` along ``axis`` (all of them when the plan does not cut it)."""
    return slices.get(name, {}).get(axis, list(range(size)))


def _same(slices: Slices, pairs: Sequence[tuple[str, int]], sizes: Sequence[int], what: str) -> None:
    """All ``(tensor, axis)`` in ``pairs`` must keep the same indices (they are one coupled dimension)."""
    lists = [_get(slices, n, a, s) for (n, a), s in zip(pairs, sizes)]
    for (name, axis), idx in zip(pairs[1:], lists[1:]):
        if idx != lists[0]:
            n0, a0 = pairs[0]
            raise PlanError(
                f"{what}: {n0} axis {a0} keeps {_short(lists[0])} but {name} axis {axis} keeps {_short(idx)}; "
                "coupled dimensions must keep the same indices."
            )


def _imply_folded_norms(model: nn.Module, slices: Slices) -> None:
    """Fill in the slices of a BatchNorm folded into the Conv before it. The ONNX file holds only the conv's weight
    and the folded bias (the BN's ``bias`` source), so a plan written from it names only those two; the BN's other
    tensors keep the same channels. Anything else is left for :func:`_check_couplings` to report."""
    for path, mod in model.named_modules():
        pre = f"{path}." if path else ""
        children = list(mod.named_children())
        for (n1, m1), (n2, m2) in zip(children, children[1:]):
            if not (isinstance(m1, nn.Conv2d) and isinstance(m2, nn.modules.batchnorm._NormBase)):
                continue
            norm = [t for t in ("weight", "bias", "running_mean", "running_var") if getattr(m2, t) is not None]
            names = [f"{pre}{n1}.weight"] + [f"{pre}{n2}.{t}" for t in norm]
            # the folded file's signature: the conv weight and the BN bias (the folded bias) cut alike; a plan
            # naming only one of them is left for _check_couplings to refuse
            conv_w, bn_b = slices.get(names[0], {}).get(0), slices.get(f"{pre}{n2}.bias", {}).get(0)
            given = [slices[n][0] for n in names if 0 in slices.get(n, {})]
            if conv_w is not None and conv_w == bn_b and all(g == conv_w for g in given):
                for n in names:
                    slices.setdefault(n, {}).setdefault(0, list(conv_w))


def _check_couplings(model: nn.Module, slices: Slices) -> None:
    """Check the couplings known from the module structure (see the module docstring)."""
    for path, mod in model.named_modules():
        pre = f"{path}." if path else ""
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            n = mod.weight.shape[0]
            _same(slices, [(pre + "weight", 0), (pre + "bias", 0)], [n, n], f"{path} output features")
        if isinstance(mod, nn.modules.batchnorm._NormBase):
            names = [pre + t for t in ("weight", "bias", "running_mean", "running_var") if getattr(mod, t) is not None]
            _same(slices, [(n, 0) for n in names], [mod.num_features] * len(names), f"{path} channels")
        if isinstance(mod, nn.LayerNorm) and mod.weight is not None:
            names = [pre + "weight"] + ([pre + "bias"] if mod.bias is not None else [])
            size = mod.weight.shape[0]
            _same(slices, [(n, 0) for n in names], [size] * len(names), f"{path} features")
        children = list(mod.named_children())
        for (n1, m1), (n2, m2) in zip(children, children[1:]):  # Conv registered right before its BN
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.modules.batchnorm._NormBase):
                _same(
                    slices,
                    [(f"{pre}{n1}.weight", 0), (f"{pre}{n2}.weight", 0)],
                    [m1.out_channels, m2.num_features],
                    f"{pre}{n1} -> {pre}{n2}",
                )
        fc1, fc2 = getattr(mod, "fc1", None), getattr(mod, "fc2", None)
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
            _same(
                slices,
                [(pre + "fc1.weight", 0), (pre + "fc2.weight", 1)],
                [fc1.out_features, fc2.in_features],
                f"{path} MLP hidden neurons",
            )
        convs = [getattr(getattr(mod, n, None), "conv", None) for n in ("conv1_1x1", "conv2_kxk", "conv3_1x1")]
        if all(isinstance(c, nn.Conv2d) for c in convs) and convs[1].groups == convs[1].in_channels > 1:
            _same(
                slices,
                [
                    (pre + "conv1_1x1.conv.weight", 0),
                    (pre + "conv2_kxk.conv.weight", 0),
                    (pre + "conv3_1x1.conv.weight", 1),
                ],
                [convs[0].out_channels, convs[1].out_channels, convs[2].in_channels],
                f"{path} bottleneck (1x1 -> depthwise -> 1x1)",
            )


def _resize_module(path: str, mod: nn.Module, new: dict[str, torch.Tensor]) -> None:
    """Replace ``mod``'s tensors by the sliced ``new`` ones and fix its width attributes, checking shapes."""
    for attr, t in new.items():
        if attr in mod._parameters:
            old = mod._parameters[attr]
            mod._parameters[attr] = nn.Parameter(t.detach().clone(), requires_grad=old.requires_grad)
        else:
            mod._buffers[attr] = t.detach().clone()
    if isinstance(mod, nn.Linear):
        out_f, in_f = mod.weight.shape
        if mod.bias is not None and mod.bias.shape[0] != out_f:
            raise PlanError(f"{path}: weight keeps {out_f} output features but bias keeps {mod.bias.shape[0]}.")
        mod.in_features, mod.out_features = int(in_f), int(out_f)
    elif isinstance(mod, nn.Conv2d):
        out_c, in_per_group, kh, kw = mod.weight.shape
        if (kh, kw) != tuple(mod.kernel_size):
            raise PlanError(f"{path}: the plan cuts the kernel's spatial axes; only channel axes can be cut.")
        if mod.groups == 1:
            mod.in_channels, mod.out_channels = int(in_per_group), int(out_c)
        elif mod.groups == mod.in_channels == mod.out_channels:  # depthwise: one group per channel
            if in_per_group != 1:
                raise PlanError(f"{path}: a depthwise conv's weight axis 1 has size 1 and cannot be cut.")
            mod.groups = mod.in_channels = mod.out_channels = int(out_c)
        else:
            raise PlanError(f"{path}: grouped conv with {mod.groups} groups (not depthwise) cannot be cut.")
        if mod.bias is not None and mod.bias.shape[0] != out_c:
            raise PlanError(f"{path}: weight keeps {out_c} output channels but bias keeps {mod.bias.shape[0]}.")
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        sizes = {
            t: int(getattr(mod, t).shape[0])
            for t in ("weight", "bias", "running_mean", "running_var")
            if getattr(mod, t) is not None
        }
        if len(set(sizes.values())) != 1:
            raise PlanError(f"{path}: BatchNorm tensors left with different widths {sizes}; cut all four together.")
        mod.num_features = next(iter(sizes.values()))
    elif isinstance(mod, nn.LayerNorm):
        sizes = {t: int(getattr(mod, t).shape[0]) for t in ("weight", "bias") if getattr(mod, t) is not None}
        if len(set(sizes.values())) != 1 or len(mod.normalized_shape) != 1:
            raise PlanError(f"{path}: LayerNorm tensors left with different widths {sizes}.")
        mod.normalized_shape = (next(iter(sizes.values())),)
    # other modules (e.g. an attention module's per-head tables) only hold tensors: nothing to fix


def _probe_size(config: ModelConfig) -> int:
    return config.input_size if config.family == "swin" else 32


def apply_plan(model: Segmentor, plan: dict[str, Any]) -> Segmentor:
    """Return a copy of the UNPRUNED ``model`` cut to ``plan``'s structure (its weights sliced; input untouched).

    For every ``slices`` entry ``{tensor: {axis: kept}}``: ``t' = t.index_select(axis, kept)`` (indices relative
    to the original). ``heads`` / ``neurons`` entries imply the qkv rows ``p * H * d + h * d + j`` (``p`` in q,k,v,
    ``h`` kept, ``j < d = head_dim``), the proj columns ``h * d + j`` and fc1 rows / fc2 columns; the implied slices
    are added when the plan omits them and must agree when it lists them. Raises :class:`PlanError` when the plan
    does not fit (see the module docstring).
    """
    plan = normalize_plan(plan)
    if not isinstance(model, Segmentor):
        raise PlanError(f"apply_plan needs a models.registry.Segmentor, got {type(model).__name__}.")
    slices, heads = _collect_slices(model, plan)
    _imply_folded_norms(model, slices)
    _check_couplings(model, slices)
    new_model = copy.deepcopy(model)
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    state = dict(new_model.named_parameters())
    state.update(dict(new_model.named_buffers()))
    for name, axes in slices.items():
        t = state[name].detach()
        for axis, kept in sorted(axes.items()):
            t = t.index_select(axis, torch.tensor(kept, dtype=torch.long))
        path, _, attr = name.rpartition(".")
        per_module.setdefault(path, {})[attr] = t
    for path, new in per_module.items():
        _resize_module(path, new_model.get_submodule(path), new)
    for path, kept in heads.items():
        attn = new_model.get_submodule(path)
        head_dim = int(getattr(attn, "head_dim", attn.qkv.out_features // 3 // len(kept)))
        attn.num_heads = len(kept)  # head_dim and scale (head_dim ** -0.5) are unchanged
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = len(kept) * head_dim
    for path in {p.removesuffix(QK_SUFFIX) for p in plan["head_dim"]}:
        attn, _, _, heads_now, head_dim = _attention_parts(new_model, path)
        dims, qk_dims = _head_dims(plan, path, head_dim), _head_dims(plan, path + QK_SUFFIX, head_dim, path)
        # fewer channels per head; the scale stays the original 1/sqrt(head_dim), as in the ONNX graph, so the
        # attention is computed explicitly (fused SDPA would take 1/sqrt of the new head_dim)
        attn.head_dim = len(dims)
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = heads_now * len(dims)
        if hasattr(attn, "fused_attn"):
            attn.fused_attn = False
        if len(qk_dims) != len(dims):
            _split_qk(path, attn, len(qk_dims))
    for path, mod in new_model.named_modules():  # every attention must agree with its projections
        qkv = getattr(mod, "qkv", None)
        if hasattr(mod, "num_heads") and isinstance(qkv, nn.Linear) and hasattr(mod, "head_dim"):
            qk_dim = int(getattr(mod, "qk_dim", mod.head_dim))
            want = int(mod.num_heads) * (2 * qk_dim + int(mod.head_dim))
            if qkv.out_features != want:
                raise PlanError(
                    f"{path}: qkv keeps {qkv.out_features} outputs but {mod.num_heads} heads x (q/k {qk_dim} x 2 + "
                    f"v {mod.head_dim}) = {want}; cut whole heads through a 'heads' entry."
                )
    _apply_low_rank(new_model, plan)  # after the cuts: a factored layer has its cut widths
    size = _probe_size(model.config)
    new_model.eval()
    feats: list[torch.Tensor] = []
    handle = new_model.backbone.register_forward_hook(lambda _m, _i, out: feats.extend(out))
    try:
        with torch.no_grad():
            out = new_model(torch.zeros(1, 3, size, size))
    except RuntimeError as exc:
        raise PlanError(
            f"the pruned structure does not run ({str(exc).splitlines()[0]}): a layer's output cut does not match "
            "its consumer's input cut; the plan does not fit this configuration."
        ) from exc
    finally:
        handle.remove()
    new_model.backbone.channels = [int(f.shape[1]) for f in feats]  # stage widths after the cut
    if out.shape[1] != model.config.num_classes:
        raise PlanError(f"the plan cuts the class logits ({out.shape[1]} of {model.config.num_classes} left).")
    new_model.train(model.training)
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in new_model.parameters())
    log.info("applied plan: %d tensors cut, %d -> %d parameters", len(slices), n_before, n_after)
    return new_model


class QkSplitAttention(Attention):
    """timm's ``Attention`` whose q and k keep ``qk_dim`` channels per head and v keeps ``head_dim`` (a plan that
    cut the q/k head channels apart from the v ones): the fused qkv output is split by sizes instead of reshaped
    into three equal parts. The scale stays the original ``1/sqrt(head_dim)`` (``self.scale``), as in the graph."""

    qk_dim: int

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        h, dq, dv = self.num_heads, self.qk_dim, self.head_dim
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * dv], dim=-1)
        q, k = q.reshape(b, n, h, dq).transpose(1, 2), k.reshape(b, n, h, dq).transpose(1, 2)
        v = v.reshape(b, n, h, dv).transpose(1, 2)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(n, attn, attn_mask, is_causal))  # as timm's forward
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.norm((attn @ v).transpose(1, 2).reshape(b, n, h * dv))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def _split_qk(path: str, attn: nn.Module, qk_dim: int) -> None:
    """Give attention ``path`` q/k head channels of their own count (:class:`QkSplitAttention`)."""
    plain = type(attn) is Attention and all(
        isinstance(getattr(attn, m, None), nn.Identity) for m in ("q_norm", "k_norm")
    )
    if not plain:
        raise PlanError(
            f"plan head_dim {path}{QK_SUFFIX}: q/k keep another channel count than v, which only timm's plain "
            f"Attention (no q/k norm) is rebuilt with; {path} is a {type(attn).__name__}."
        )
    attn.__class__ = QkSplitAttention
    attn.qk_dim = qk_dim


# ------------------------------------------------------------------------------------- low-rank factorisations


def _low_rank_entry(path: str, entry: Any) -> tuple[str, int, int, int]:
    """``(kind, in, out, rank)`` of a ``plan["low_rank"]`` entry, or :class:`PlanError` saying what is wrong."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("linear", "conv"):
        raise PlanError(
            f"plan low_rank {path}: expected {{'kind': 'linear' | 'conv', 'in': N, 'out': M, 'rank': R}}, got "
            f"{entry!r}."
        )
    dims = [entry.get(k) for k in ("in", "out", "rank")]
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise PlanError(f"plan low_rank {path}: in, out and rank must be positive integers, got {dims}.")
    return str(entry["kind"]), int(dims[0]), int(dims[1]), int(dims[2])


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first [rank, in], second [out, rank])`` with ``second @ first`` the best rank-``rank`` approximation of
    ``w [out, in]`` (balanced: the square roots of the singular values on both sides), as ``passes.low_rank``."""
    u, s, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(w.dtype), (u[:, :rank] * root).to(w.dtype)


def _apply_low_rank(model: nn.Module, plan: dict[str, Any]) -> int:
    """Replace each module of ``plan["low_rank"]`` (in place) by its two factors; return how many.

    An ``nn.Linear(in, out)`` becomes ``nn.Sequential(nn.Linear(in, r, bias=False), nn.Linear(r, out))``, a 1x1
    ``nn.Conv2d`` two 1x1 convs (the first with its stride, padding and dilation; the second with its bias). The
    factors start as the truncated SVD of the module's weight (so a plan applied without the file's weights is
    still the nearest rank-``r`` model); :func:`load_onnx_weights` then loads the file's factors.
    """
    entries = plan.get("low_rank") or {}
    for path, entry in entries.items():
        kind, n_in, n_out, rank = _low_rank_entry(path, entry)
        mod = _module(model, path, "low_rank")
        if kind == "linear":
            if not isinstance(mod, nn.Linear):
                raise PlanError(
                    f"plan low_rank {path}: a linear factorisation, but the module is a {type(mod).__name__}."
                )
            have = (mod.in_features, mod.out_features)
        else:
            if not (isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1) and mod.groups == 1):
                raise PlanError(f"plan low_rank {path}: a 1x1 conv factorisation, but the module is {mod}.")
            have = (mod.in_channels, mod.out_channels)
        if have != (n_in, n_out):
            raise PlanError(
                f"plan low_rank {path}: factored as {n_in} -> {n_out}, but the module here is {have[0]} -> "
                f"{have[1]}; the plan was made for another configuration (or a cut after the factorisation)."
            )
        if rank > min(n_in, n_out):
            raise PlanError(f"plan low_rank {path}: rank {rank} exceeds min(in, out) = {min(n_in, n_out)}.")
        w = mod.weight.detach().reshape(n_out, n_in)
        first_w, second_w = _svd_factors(w, rank)
        bias = mod.bias is not None
        kw = {"device": mod.weight.device, "dtype": mod.weight.dtype}
        if kind == "linear":
            first: nn.Module = nn.Linear(n_in, rank, bias=False, **kw)
            second: nn.Module = nn.Linear(rank, n_out, bias=bias, **kw)
        else:
            first = nn.Conv2d(
                n_in, rank, 1, stride=mod.stride, padding=mod.padding, dilation=mod.dilation, bias=False,
                padding_mode=mod.padding_mode, **kw,
            )  # fmt: skip
            second = nn.Conv2d(rank, n_out, 1, bias=bias, **kw)
        with torch.no_grad():
            first.weight.copy_(first_w.reshape(first.weight.shape))
            second.weight.copy_(second_w.reshape(second.weight.shape))
            if bias:
                second.bias.copy_(mod.bias)
        for p in (*first.parameters(), *second.parameters()):
            p.requires_grad_(mod.weight.requires_grad)
        seq = nn.Sequential(first, second).train(mod.training)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, seq)
    if entries:
        log.info("low-rank: %d module(s) replaced by two factors", len(entries))
    return len(entries)


# ----------------------------------------------------------------------------------------- ONNX -> torch weights


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
    loaded: dict[str, str] = {}
    folded_convs: dict[str, str] = {}  # bn path -> conv weight name

    def torch_value(init_name: str, src: dict[str, Any]) -> torch.Tensor:
        arr = numpy_helper.to_array(inits[init_name]).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.T if src.get("transposed") else arr))

    present = [(name, weight_sources(entry)) for name, entry in weight_map.items() if name in inits]
    with torch.no_grad():
        for init_name, sources in present:  # removed initializers (a whole unit cut away) are checked below
            if len(sources) != 1:
                continue
            src = sources[0]
            param = src["param"]
            if param not in state:
                raise PlanError(
                    f"weight_map: initializer {init_name!r} maps to {param!r}, which is not a tensor of the rebuilt "
                    "model; the file's metadata does not describe this configuration."
                )
            value, target = torch_value(init_name, src), state[param]
            if tuple(value.shape) != tuple(target.shape):
                raise PlanError(
                    f"initializer {init_name!r} has shape {list(value.shape)} (torch layout) but {param} of the "
                    f"rebuilt model is {list(target.shape)}: the file's plan does not describe its weights."
                )
            if param in loaded and not torch.equal(target, value):
                raise PlanError(f"{param} is given twice with different values ({loaded[param]}, {init_name}).")
            target.copy_(value)
            loaded[param] = init_name
        for _, sources in present:
            for src in sources:
                bn, param = src.get("folded_bn"), str(src["param"])
                if bn and param.endswith(".weight") and not param.startswith(bn + "."):
                    folded_convs[bn] = param
        folded_stats = {f"{bn}.{s}" for bn in folded_convs for s in ("weight", "running_mean", "running_var")}
        for init_name, sources in present:  # equal tensors stored once: fill what is still missing
            if len(sources) == 1:
                continue
            for src in sources:
                param = src["param"]
                if param not in state or param in loaded or param in folded_stats:
                    continue
                value = torch_value(init_name, src)
                if tuple(value.shape) == tuple(state[param].shape):
                    state[param].copy_(value)
                    loaded[param] = init_name
        for path, mod in model.named_modules():
            if not isinstance(mod, nn.modules.batchnorm._NormBase):
                continue
            pre = f"{path}."
            stats = [pre + "weight", pre + "running_mean", pre + "running_var"]
            if path in folded_convs and pre + "bias" not in loaded and not any(s in loaded for s in stats):
                # folded into its conv with a zero bias, which the dynamo exporter's optimiser then removed
                mod.bias.zero_()
                loaded[pre + "bias"] = "folded"
            if pre + "bias" in loaded and not any(s in loaded for s in stats):
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
                summary.folded_bn.append(path)
    missing = [k for k in state if k not in loaded]
    if missing:
        raise PlanError(
            f"the ONNX file holds no weight for {len(missing)} tensors of the rebuilt model (e.g. "
            f"{', '.join(missing[:4])}); its weight_map is incomplete (a pass renamed initializers without updating "
            "vitseg.weight_map?)."
        )
    summary.loaded = sorted(k for k, v in loaded.items() if v != "folded")
    return summary


def _load(path: str | Path) -> onnx.ModelProto:
    from fileformat.errors import PassError
    from fileformat.io import load_model

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
    from fileformat.metadata import read_metadata
    from fileformat.plan import read_plan

    proto = _load(path)
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


# -------------------------------------------------------------------------------------------- round-trip check


@dataclass
class RoundTripReport:
    """Comparison of a pruned ONNX file with the re-export of its rebuilt torch model."""

    source: str
    params_onnx: int
    params_rebuilt: int
    params_torch: int
    shape_mismatches: list[str]
    max_abs_error: float
    tolerance: float
    heads: int
    neurons: int
    channels: int
    sliced_tensors: int
    low_rank: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.params_onnx == self.params_rebuilt
            and not self.shape_mismatches
            and self.max_abs_error <= self.tolerance
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        lines = [
            f"round-trip of {self.source}: {'OK' if self.ok else 'MISMATCH'}",
            f"  plan: {self.heads} attention blocks, {self.neurons} MLPs, {self.channels} conv units, "
            f"{self.sliced_tensors} tensors cut" + (f", {self.low_rank} low-rank layers" if self.low_rank else ""),
            f"  parameters: ONNX {self.params_onnx}, rebuilt export {self.params_rebuilt}, torch {self.params_torch}",
            "  initializer shapes: "
            + ("all equal" if not self.shape_mismatches else "; ".join(self.shape_mismatches[:5])),
            f"  outputs: max abs {self.max_abs_error:.3g} (tolerance {self.tolerance:g})",
        ]
        return "\n".join(lines)


def _torch_shapes(proto: onnx.ModelProto, weight_map: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{torch tensor: shape in torch layout}`` of the weight initializers of ``proto`` that hold one torch tensor
    (through its weight map; one stored for several equal tensors, such as zero biases, names none of them)."""
    out: dict[str, tuple[int, ...]] = {}
    for init in proto.graph.initializer:
        sources = weight_sources(weight_map.get(init.name))
        if len(sources) == 1:
            shape = tuple(int(d) for d in init.dims)
            out[str(sources[0]["param"])] = shape[::-1] if sources[0].get("transposed") else shape
    return out


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from fileformat.session import SessionConfig, load_session

    sess = load_session(proto, SessionConfig(threads=1, spinning=True))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_roundtrip(onnx_path: str | Path, *, tolerance: float = 1e-4, seed: int = 0) -> RoundTripReport:
    """Rebuild ``onnx_path`` in torch, re-export it with the same options and compare the two ONNX files.

    Compared: parameter counts (``fileformat.params.count_params``), the shape of every weight initializer per
    torch tensor name, and the onnxruntime outputs on two seeded inputs (max abs). Raises :class:`PlanError` when
    the file cannot be rebuilt; a rebuilt model that differs gives a report with ``ok`` false.
    """
    from exporters.export import ExportError, ExportOptions, export_torch_model
    from fileformat.metadata import read_metadata
    from fileformat.params import count_params

    src = _load(onnx_path)
    model, plan, meta = student_from_onnx(onnx_path)
    size = int((meta.get("input_size") or [_probe_size(model.config)])[0])
    opts = ExportOptions(
        model=model.config.name,
        input_size=size,
        opset=int(meta.get("opset", 17)),
        exporter=str(meta.get("exporter", "legacy")),
        fused_attn=meta.get("fused_attn"),
        target=meta.get("target"),
        tolerance=max(tolerance, 1e-4),
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
        out = Path(tmp) / "rebuilt.onnx"
        try:
            export_torch_model(model, out, opts, extra_metadata={"plan": plan})
        except ExportError as exc:
            raise PlanError(f"the rebuilt model does not export: {exc}") from exc
        rebuilt = onnx.load(str(out))
    shapes_src = _torch_shapes(src, meta["weight_map"])
    shapes_new = _torch_shapes(rebuilt, read_metadata(rebuilt)["weight_map"])
    # tensors both files name unambiguously (completeness is load_onnx_weights' check)
    mismatches = [
        f"{k}: {list(shapes_src[k])} vs {list(shapes_new[k])}"
        for k in sorted(set(shapes_src) & set(shapes_new))
        if shapes_src[k] != shapes_new[k]
    ]
    gen = np.random.default_rng(seed)
    err = 0.0
    for _ in range(2):
        x = gen.standard_normal((1, 3, size, size)).astype(np.float32)
        err = max(err, float(np.abs(_run(src, x) - _run(rebuilt, x)).max()))
    report = RoundTripReport(
        source=str(onnx_path),
        # counted once per reader: how the exporter merged equal tensors is storage, not structure
        params_onnx=count_params(src),
        params_rebuilt=count_params(rebuilt),
        params_torch=sum(p.numel() for p in model.parameters()),
        shape_mismatches=mismatches,
        max_abs_error=err,
        tolerance=tolerance,
        heads=len(plan["heads"]),
        neurons=len(plan["neurons"]),
        channels=len(plan["channels"]),
        sliced_tensors=len(plan["slices"]),
        low_rank=len(plan.get("low_rank") or {}),
    )
    log.info("%s", report.format())
    return report
