"""Surgery: a plan applied to an unpruned torch model (the notes of :mod:`models.prune_torch` say how each entry
is cut), the attention with q/k channels of their own, and the check that the cut model still runs."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from fileformat.plan import QK_SUFFIX
from models.low_rank import apply_low_rank
from models.registry import Segmentor
from models.torch_plan import PlanError, Slices, normalize_plan, plan_indices, plan_module, probe_size

log = logging.getLogger(__name__)

__all__ = ["QkSplitAttention", "apply_plan"]


def _attention_parts(model: nn.Module, path: str) -> tuple[nn.Module, nn.Linear, nn.Linear, int, int]:
    """(module, qkv, proj, num_heads, head_dim) of a fused-qkv multi-head attention module (timm's Attention)."""
    attn = plan_module(model, path, "heads")
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
    slices = _explicit_slices(model, plan)
    heads = {path: _head_slices(model, plan, path, entry, slices) for path, entry in plan["heads"].items()}
    for path, entry in plan["neurons"].items():
        _neuron_slices(model, path, entry, slices)
    for path, entry in plan["channels"].items():
        _check_channels(model, path, entry, slices)
    return slices, heads


def _explicit_slices(model: nn.Module, plan: dict[str, Any]) -> Slices:
    """The plan's ``slices`` entries, each tensor, axis and index checked against ``model``."""
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
            slices.setdefault(name, {})[axis] = plan_indices(f"plan slices {name} axis {axis}", kept, shape[axis])
    return slices


def _head_slices(model: nn.Module, plan: dict[str, Any], path: str, entry: Any, slices: Slices) -> list[int]:
    """The qkv rows and proj columns a ``heads`` entry implies, merged into ``slices``; returns the kept heads."""
    _, qkv, _, total, head_dim = _attention_parts(model, path)
    if not isinstance(entry, dict) or "kept" not in entry:
        raise PlanError(f"plan heads {path}: expected {{'kept': [...], 'total': N}}, got {entry!r}.")
    if int(entry.get("total", total)) != total:
        raise PlanError(f"plan heads {path}: the plan says {entry['total']} heads, the model has {total}.")
    kept = plan_indices(f"plan heads {path}", entry["kept"], total)
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
    return kept


def _neuron_slices(model: nn.Module, path: str, entry: Any, slices: Slices) -> None:
    """The fc1 rows and fc2 columns a ``neurons`` entry implies, merged into ``slices``."""
    mlp = plan_module(model, path, "neurons")
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        # an MLP the graph shows but no one torch module holds (a 1x1-conv pair across two blocks): the plan's
        # explicit slices of its tensors, validated above, are the cut
        if any(name.startswith(path + ".") for name in slices):
            return
        raise PlanError(f"plan neurons: {path!r} is a {type(mlp).__name__}, not an MLP with fc1/fc2 Linears.")
    if not isinstance(entry, dict) or "kept" not in entry:
        raise PlanError(f"plan neurons {path}: expected {{'kept': [...], 'total': N}}, got {entry!r}.")
    total = fc1.out_features
    if int(entry.get("total", total)) != total:
        raise PlanError(f"plan neurons {path}: the plan says {entry['total']} neurons, the model has {total}.")
    kept = plan_indices(f"plan neurons {path}", entry["kept"], total)
    src = f"plan neurons {path}"
    _merge_derived(slices, f"{path}.fc1.weight", 0, kept, src)
    if fc1.bias is not None:
        _merge_derived(slices, f"{path}.fc1.bias", 0, kept, src)
    _merge_derived(slices, f"{path}.fc2.weight", 1, kept, src)


def _check_channels(model: nn.Module, path: str, entry: Any, slices: Slices) -> None:
    """A ``channels`` entry must agree with the slices of its conv's output channels."""
    mod = plan_module(model, path, "channels")
    conv = mod if isinstance(mod, nn.Conv2d) else getattr(mod, "conv", None)
    if conv is None and isinstance(mod, nn.Sequential) and len(mod) and isinstance(mod[0], nn.Conv2d):
        conv = mod[0]
    if not isinstance(conv, nn.Conv2d) or not isinstance(entry, dict) or "kept" not in entry:
        raise PlanError(f"plan channels: {path!r} must name a Conv2d (or conv block) with {{'kept': [...]}}.")
    conv_name = path if conv is mod else next(n for n, m in model.named_modules() if m is conv)
    kept = plan_indices(f"plan channels {path}", entry["kept"], conv.out_channels)
    have = slices.get(f"{conv_name}.weight", {}).get(0)
    if have is None or have != kept:
        raise PlanError(
            f"plan channels {path} keeps {_short(kept)} but slices {conv_name}.weight axis 0 "
            f"{'is absent' if have is None else 'keeps ' + _short(have)}: the plan is inconsistent."
        )


def _head_dims(plan: dict[str, Any], path: str, head_dim: int, default: str | None = None) -> list[int]:
    """The channels each head of attention ``path`` keeps (``plan["head_dim"]``; those of entry ``default`` when
    there is none for ``path``, and all when there is neither). ``<attention>`` names the v channels (and the q/k
    channels with them), ``<attention>#qk`` the q/k channels where a pass cut them apart from v."""
    entry = plan["head_dim"].get(path)
    if entry is None:
        return _head_dims(plan, default, head_dim) if default is not None else list(range(head_dim))
    if not isinstance(entry, dict) or "kept" not in entry or int(entry.get("total", head_dim)) != head_dim:
        raise PlanError(f"plan head_dim {path}: expected {{'kept': [...], 'total': {head_dim}}}, got {entry!r}.")
    return plan_indices(f"plan head_dim {path}", entry["kept"], head_dim)


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


def _whole_groups(path: str, kept: Sequence[int] | None, per: int) -> None:
    """Check that the kept output indices ``kept`` of a grouped conv take whole groups of ``per`` channels (the
    passes cut a grouped conv by whole groups: each group's filters stay together)."""
    if kept is None or per == 1:
        return
    groups = sorted({k // per for k in kept})
    if sorted(kept) != [g * per + j for g in groups for j in range(per)]:
        raise PlanError(
            f"{path}: the plan cuts channels inside the groups of a grouped conv; only whole groups can be cut."
        )


def _regroup(path: str, mod: nn.Conv2d | nn.ConvTranspose2d, w: torch.Tensor, kept: Sequence[int] | None) -> None:
    """A grouped conv cut by whole groups: the channels of one group stay (weight axis 1), the group count follows
    the kept ones. Conv2d's weight is ``[groups x co, ci, k...]``, ConvTranspose2d's ``[groups x ci, co, k...]``."""
    transposed = isinstance(mod, nn.ConvTranspose2d)
    ci, co = mod.in_channels // mod.groups, mod.out_channels // mod.groups
    axis0, axis1 = (ci, co) if transposed else (co, ci)
    if int(w.shape[1]) != axis1 or int(w.shape[0]) % axis0:
        raise PlanError(
            f"{path}: grouped conv with {mod.groups} groups cut inside its groups; only whole groups can be cut."
        )
    _whole_groups(path, kept, axis0)
    mod.groups = int(w.shape[0]) // axis0
    mod.in_channels, mod.out_channels = mod.groups * ci, mod.groups * co


def _resize_module(path: str, mod: nn.Module, new: dict[str, torch.Tensor], kept: Sequence[int] | None = None) -> None:
    """Replace ``mod``'s tensors by the sliced ``new`` ones and fix its width attributes, checking shapes.
    ``kept``: the weight's kept indices on axis 0, where the plan slices it (whole groups of a grouped conv)."""
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
        else:  # grouped (a channel multiplier, ResNeXt): by whole groups
            _regroup(path, mod, mod.weight, kept)
        if mod.bias is not None and mod.bias.shape[0] != out_c:
            raise PlanError(f"{path}: weight keeps {out_c} output channels but bias keeps {mod.bias.shape[0]}.")
    elif isinstance(mod, nn.ConvTranspose2d):
        in_c, out_per_group, kh, kw = mod.weight.shape
        if (kh, kw) != tuple(mod.kernel_size):
            raise PlanError(f"{path}: the plan cuts the kernel's spatial axes; only channel axes can be cut.")
        if mod.groups == 1:
            mod.in_channels, mod.out_channels = int(in_c), int(out_per_group)
        else:
            _regroup(path, mod, mod.weight, kept)
        if mod.bias is not None and mod.bias.shape[0] != mod.out_channels:
            raise PlanError(
                f"{path}: weight keeps {mod.out_channels} output channels but bias keeps {mod.bias.shape[0]}."
            )
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
        _resize_module(path, new_model.get_submodule(path), new, slices.get(f"{path}.weight", {}).get(0))
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
    apply_low_rank(new_model, plan)  # after the cuts: a factored layer has its cut widths
    size = probe_size(model.config)
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
