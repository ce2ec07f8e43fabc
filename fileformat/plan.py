"""The structural plan: what the passes kept, stored in the model as ``vitseg.plan`` (JSON).

Format (version 1)::

    {
      "version": 1,
      "heads":    {"<attention module path>": {"kept": [0, 2], "total": 4}},
      "neurons":  {"<mlp module path>":       {"kept": [...],  "total": 288}},
      "channels": {"<conv module path>":      {"kept": [...],  "total": 128}},
      "slices":   {"<torch parameter or buffer name>": {"<axis>": [kept indices]}},
      "fingerprint": {"heads": {"<attention module path>": [heads in the original model, head size]},
                      "neurons": {"<mlp module path>": [neurons in the original model, 1]}}
    }

``fingerprint`` records every prunable unit of the model a pass ran on, so that a plan applied to another model
(MobileViT-S's heads plan on XXS: same block names, other head sizes) is refused with the difference named.

Every index list is relative to the ORIGINAL unpruned model, so plans from successive passes compose
(:func:`merge_plans`) and the torch side can rebuild the pruned structure from the unpruned configuration:
``slices`` is in torch layout (a Linear weight is ``[out, in]``; axis 0 = output features), one entry per tensor that
lost rows/columns/channels, BatchNorm weights/biases/running statistics included. Units are named by their torch
module path (from the exporter's ``weight_map`` or the dynamo exporter's node metadata); a model without that
information uses ``graph:<node name>``.
"""

from __future__ import annotations

import copy
from typing import Any

import onnx

from fileformat.metadata import read_metadata, write_metadata

PLAN_VERSION = 1
SECTIONS = ("heads", "neurons", "channels")


def empty_plan() -> dict[str, Any]:
    return {"version": PLAN_VERSION, "heads": {}, "neurons": {}, "channels": {}, "slices": {}}


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
    return out


def write_plan(model: onnx.ModelProto, new: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new`` (relative to ``model``'s current structure) into the plan stored in ``model``, in place."""
    merged = merge_plans(read_plan(model), new)
    write_metadata(model, {"plan": merged})
    return merged
