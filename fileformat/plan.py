"""The structural plan: what the passes kept, stored in the model as ``vitseg.plan`` (JSON).

Format (version 1)::

    {
      "version": 1,
      "heads":    {"<attention module path>": {"kept": [0, 2], "total": 4}},
      "neurons":  {"<mlp module path>":       {"kept": [...],  "total": 288}},
      "channels": {"<conv module path>":      {"kept": [...],  "total": 128}},
      "width":    {"<module path>":           {"kept": [...],  "total": 144}},   # a transformer's embedding dim
      "head_dim": {"<attention module path>": {"kept": [...],  "total": 32},     # v (and q/k) channels per head
                   "<attention module path>#qk": {"kept": [...], "total": 32}},  # q/k channels, when cut apart
      "slices":   {"<torch parameter or buffer name>": {"<axis>": [kept indices]}},
      "low_rank": {"<Linear or 1x1 Conv2d module path>": {"kind": "linear", "in": 64, "out": 192, "rank": 32}},
      "fingerprint": {"heads": {"<attention module path>": [heads in the original model, head size]},
                      "neurons": {"<mlp module path>": [neurons in the original model, 1]}}
    }

``head_dim``: where an attention block's q/k channels are a group apart from its v channels (every block whose
graph lets them differ, fused qkv included), ``<attention>`` keeps the v channels and ``<attention>#qk`` the q and k
channels, and a pass that cuts one writes both. An entry without its ``#qk`` partner keeps q, k and v alike (as
every plan did before the two were apart).

``fingerprint`` records every prunable unit of the model a pass ran on, so that a plan applied to another model
(MobileViT-S's heads plan on XXS: same block names, other head sizes) is refused with the difference named.

Every index list is relative to the ORIGINAL unpruned model, so plans from successive passes compose
(:func:`merge_plans`) and the torch side can rebuild the pruned structure from the unpruned configuration:
``slices`` is in torch layout (a Linear weight is ``[out, in]``; axis 0 = output features), one entry per tensor that
lost rows/columns/channels, BatchNorm weights/biases/running statistics included. Units are named by their torch
module path (from the exporter's ``weight_map`` or the dynamo exporter's node metadata); a model without that
information uses ``graph:<node name>``.

``low_rank`` (written by ``passes.low_rank``; present only in plans that factor something) lists the layers
replaced by two factors: ``kind`` is ``linear`` (an ``nn.Linear``) or ``conv`` (a 1x1 ``nn.Conv2d``), ``in``/``out``
the layer's widths when it was factored (after any earlier cut) and ``rank`` the inner width. The torch side
replaces the module by ``nn.Sequential(first, second)`` (``<module>.0`` without bias, ``<module>.1`` with the
layer's bias). It is an additive section of version 1: a plan without it means what it meant before; a reader
that predates it rebuilds the unfactored module and then fails to load the factors (``<module>.0.weight`` is no
tensor of its model), it never loads them into the wrong structure. Factorisations are not index lists: merging
adds the later plan's entries (a layer is factored once; ``passes.low_rank`` skips factors).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from fileformat.errors import PassError
from fileformat.metadata import read_metadata, write_metadata

if TYPE_CHECKING:  # onnx is imported by whoever holds a model: not here (it costs 0.5 s)
    import onnx

PLAN_VERSION = 1
SECTIONS = ("heads", "neurons", "channels", "width", "head_dim")
#: the ``head_dim`` key suffix of an attention block's q/k channels when a pass cut them apart from its v channels
QK_SUFFIX = "#qk"
LOW_RANK = "low_rank"  # not a SECTION: no kept indices (see the module docstring)


def empty_plan() -> dict[str, Any]:
    return {"version": PLAN_VERSION, **{section: {} for section in SECTIONS}, "slices": {}}


def read_plan(model: onnx.ModelProto) -> dict[str, Any]:
    """The plan stored in ``model`` (an empty plan when there is none)."""
    plan = read_metadata(model).get("plan")
    if not plan:
        return empty_plan()
    out = empty_plan()
    out.update(copy.deepcopy(plan))
    return out


def _compose(old: list[int] | None, new: list[int]) -> list[int]:
    """Indices ``new`` (relative to a tensor already cut to ``old``) as indices of the original tensor."""
    return list(new) if old is None else [old[i] for i in new]


def merge_plans(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """Compose ``later`` (indices relative to the model ``earlier`` produced) onto ``earlier``.

    A unit or tensor in both gets its indices composed; totals stay those of the original model.
    """
    out = copy.deepcopy(earlier)
    for section in SECTIONS:
        for unit, entry in later.get(section, {}).items():
            prev = out[section].get(unit)
            if prev is None:
                out[section][unit] = copy.deepcopy(entry)
            else:
                prev["kept"] = _compose(prev["kept"], entry["kept"])
    for section, units in (later.get("fingerprint") or {}).items():
        # what the ORIGINAL model held: an earlier pass's record of a unit wins over a later (pruned) view
        fp = out.setdefault("fingerprint", {}).setdefault(section, {})
        for uid, entry in units.items():
            fp.setdefault(uid, entry)
    for tensor, axes in later.get("slices", {}).items():
        cur = out["slices"].setdefault(tensor, {})
        for axis, kept in axes.items():
            cur[str(axis)] = _compose(cur.get(str(axis)), kept)
    if later.get(LOW_RANK):
        out.setdefault(LOW_RANK, {}).update(copy.deepcopy(later[LOW_RANK]))
    return out


def write_plan(model: onnx.ModelProto, new: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new`` (relative to ``model``'s current structure) into the plan stored in ``model``, in place."""
    merged = merge_plans(read_plan(model), new)
    write_metadata(model, {"plan": merged})
    return merged


def check_indices(
    where: str, kept: Any, total: int, what: str = "indices", error: type[Exception] = PassError
) -> list[int]:
    """Kept indices as a sorted ``list[int]``: a non-empty list of distinct integers in ``[0, total)``, else
    ``error`` saying which rule failed (the passes raise :class:`PassError`, the torch side its ``PlanError``)."""
    if not isinstance(kept, (list, tuple)) or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in kept
    ):
        raise error(f"{where}: kept {what} must be a list of integers, got {kept!r}.")
    out = [int(i) for i in kept]
    if not out:
        raise error(f"{where}: keeps no {what}; keep at least one.")
    if len(set(out)) != len(out):
        raise error(f"{where}: kept {what} {out[:16]} repeat an index; give distinct indices.")
    bad = [i for i in out if not 0 <= i < total]
    if bad:
        raise error(f"{where}: {what} {bad[:8]} out of range; the original has {total} (indices 0..{total - 1}).")
    return sorted(out)


def normalize_plan(plan: Any, error: type[Exception] = PassError) -> dict[str, Any]:
    """Check a plan's container format (version, sections) and return a deep copy with every section present."""
    if not isinstance(plan, dict):
        raise error(f"a plan is a dict (fileformat.plan format), got {type(plan).__name__}.")
    version = plan.get("version", PLAN_VERSION)
    if version != PLAN_VERSION:
        raise error(f"plan version {version!r} is not supported (this code reads version {PLAN_VERSION}).")
    out = copy.deepcopy(plan)
    for section in (*SECTIONS, "slices", LOW_RANK):
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise error(f"plan section {section!r} must be a dict, got {type(out[section]).__name__}.")
    return out
