"""The toolchain's metadata inside an ONNX file (``ModelProto.metadata_props``).

Every value is a JSON string under a ``vitseg.`` key, so that a plain ``onnx.load`` shows it and any tool can read
it without this package. The exporter writes the first group; passes add their plan and history.

=====================  =====================================================================================
key                    value (JSON)
=====================  =====================================================================================
vitseg.classes         list of class names, index = class id
vitseg.input_size      [H, W] the model was exported for
vitseg.mean/.std       per-channel normalisation of RGB in [0, 1]
vitseg.config          the model configuration (``models.registry.ModelConfig`` as a dict)
vitseg.exporter        "legacy" or "dynamo"
vitseg.opset           default-domain opset
vitseg.target          device profile the export was made for, or null
vitseg.weight_map      {initializer name: {"param": torch parameter name, "transposed": bool}}
vitseg.plan            structural plan applied by the passes (see ``passes._engine.plan``)
vitseg.history         list of {"pass": name, ...} entries, one per pass that changed the model
=====================  =====================================================================================
"""

from __future__ import annotations

import json
from typing import Any

import onnx

PREFIX = "vitseg."
KEYS = (
    "classes",
    "input_size",
    "mean",
    "std",
    "config",
    "exporter",
    "opset",
    "target",
    "weight_map",
    "plan",
    "history",
)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """Return ``{key: decoded value}`` for every ``vitseg.*`` entry of ``model`` (prefix stripped)."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(PREFIX):
            try:
                out[prop.key[len(PREFIX) :]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len(PREFIX) :]] = prop.value
    return out


def write_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Set ``vitseg.<key>`` = JSON(value) for each item, replacing entries of the same key, in place."""
    keep = [p for p in model.metadata_props if p.key[len(PREFIX) :] not in values or not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        prop = model.metadata_props.add()
        prop.key = PREFIX + key
        prop.value = json.dumps(value, sort_keys=True)


def append_history(model: onnx.ModelProto, entry: dict[str, Any]) -> None:
    """Add one entry to ``vitseg.history`` in place."""
    history = list(read_metadata(model).get("history") or [])
    history.append(entry)
    write_metadata(model, {"history": history})
