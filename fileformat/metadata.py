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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx is imported by whoever holds a model: not here (it costs 0.5 s)
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


# ------------------------------------------------------------------------------------------- weight-map sources
# A weight-map entry names the torch tensor an initializer holds: {"param", "transposed", "folded_bn"}. Exporters
# merge initializers whose values are equal, so one initializer can hold several torch tensors at once (the zero
# biases of an untrained model); those are listed under "alts", each {"param", "transposed", "folded_bn"}.
_SOURCE_KEYS = ("param", "transposed", "folded_bn")


def weight_sources(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every torch tensor a weight-map entry says the initializer holds (first: the primary one)."""
    if not isinstance(entry, dict) or not entry.get("param"):
        return []
    out = [{k: entry.get(k) for k in _SOURCE_KEYS}]
    for alt in entry.get("alts") or []:
        src = {k: alt.get(k) for k in _SOURCE_KEYS}
        if src["param"] and src not in out:
            out.append(src)
    return out


def make_entry(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The weight-map entry for ``sources`` (the first is the primary one)."""
    entry = dict(sources[0])
    if len(sources) > 1:
        entry["alts"] = [dict(s) for s in sources[1:]]
    return entry


def merge_sources(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """One entry holding the sources of both (``a``'s primary first)."""
    sources = weight_sources(a)
    sources += [s for s in weight_sources(b) if s not in sources]
    return make_entry(sources) if sources else None


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def ranked_sources(entry: dict[str, Any] | None, module: str) -> list[dict[str, Any]]:
    """The sources of ``entry``, those of torch module ``module`` first (the longest shared dotted prefix; the
    stored order on ties)."""
    sources = weight_sources(entry)
    order = sorted(range(len(sources)), key=lambda i: (-_shared_prefix(str(sources[i]["param"]), module), i))
    return [sources[i] for i in order]


def pick_source(entry: dict[str, Any] | None, module: str) -> dict[str, Any] | None:
    """The source of ``entry`` that belongs to torch module ``module`` (:func:`ranked_sources`' first), or ``None``
    when the entry names no torch tensor."""
    ranked = ranked_sources(entry, module)
    return ranked[0] if ranked else None


def claim_sources(weight_map: dict[str, Any], claimed: dict[str, dict[str, Any]]) -> None:
    """In place: initializer ``name`` now holds exactly ``claimed[name]`` (a pass cut it for that torch tensor), and
    no other initializer lists that torch tensor any more (entries left with no source are dropped)."""
    params = {str(src["param"]) for src in claimed.values()}
    for name in list(weight_map):
        if name in claimed:
            continue
        sources = weight_sources(weight_map[name])
        rest = [s for s in sources if str(s["param"]) not in params]
        if len(rest) != len(sources):
            if rest:
                weight_map[name] = make_entry(rest)
            else:
                del weight_map[name]
    for name, src in claimed.items():
        weight_map[name] = make_entry([src])
