"""The torch side of the plan round-trip: rebuild a pruned ONNX file's structure (and weights) as a torch model.

The ONNX passes cut heads, MLP neurons and conv channels on the graph and record what they kept as the plan
(``fileformat.plan``, metadata ``vitseg.plan``); every index is relative to the ORIGINAL unpruned model. This
module replays that plan on the torch model built from the recorded configuration:

* :func:`apply_plan` slices every tensor named in ``plan["slices"]`` (``t' = index_select(t, axis, kept)`` per axis)
  and resizes the modules that own them: ``nn.Linear`` (``in/out_features``), ``nn.Conv2d`` and
  ``nn.ConvTranspose2d`` (``in/out_channels``; a depthwise conv keeps ``groups = in = out``, another grouped conv
  loses whole groups: ``groups`` follows them), ``nn.BatchNorm2d`` (``num_features``; timm's ``BatchNormAct2d``
  too) and ``nn.LayerNorm`` (``normalized_shape``). Attention modules named in ``plan["heads"]`` get
  ``num_heads = len(kept)`` (and ``attn_dim``); ``head_dim`` and ``scale`` stay, so ``softmax(q k^T * scale)`` is
  the same function per kept head. ``plan["head_dim"]`` sets ``head_dim`` (the v channels, and q/k's with them) and,
  under ``<attention>#qk``, the q/k channels where they were cut apart; such a block becomes a
  :class:`QkSplitAttention` (its fused qkv output split by sizes). The module objects are kept (their timm
  subclasses and hooks survive); only their tensors and width attributes change, and that one class.
* :func:`student_from_onnx` builds the model of the file's ``vitseg.config``, applies its plan and loads the file's
  weights through the exporter's ``vitseg.weight_map``. Linear weights are stored ``[in, out]`` in ONNX and are
  transposed back. The legacy exporter folds BatchNorm into the Conv before it (``W' = W * g / sqrt(v + eps)``,
  ``b' = beta + (b - mu) * g / sqrt(v + eps)``); such a pair is loaded as conv weight ``W'`` and an identity BN
  with ``weight = 1``, ``bias = b'``, ``running_mean = 0``, ``running_var = 1 - eps`` (so ``sqrt(var + eps) = 1``
  exactly in float32: ``BN(x) = (x - 0) / 1 * 1 + b' = x + b'``), and the conv's own bias (if any) set to 0.
* :func:`check_roundtrip` re-exports the rebuilt model with the file's exporter, opset and attention form and
  compares parameter count, initializer shapes (per torch tensor, through both weight maps) and onnxruntime outputs.

``python -m models.prune_torch pruned.onnx`` runs the check and prints its report (exit 0 ok, 1 mismatch or bad
file).

A plan that does not fit the configuration (an unknown tensor or module, an index out of range or repeated, a cut
that leaves a module's tensors with different widths, a Linear's output cut that differs from the next layer's input
cut where the coupling is known: bias, Conv -> BN, MLP fc1 -> fc2, qkv -> heads -> proj, timm's bottleneck
1x1 -> depthwise -> 1x1) raises :class:`PlanError`. Finally the rebuilt model is run once on a small input, so a
width mismatch between any producer and its consumer is caught as well (same count, other indices between layers
without a known coupling cannot be seen from the structure: the passes' zeroing-oracle tests cover those).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fileformat.args import Parser, non_negative
from fileformat.cli import cli_main

#: where each name ``from models.prune_torch import ...`` finds lives (imported, with torch, on first use)
_HOMES = {
    "PlanError": "torch_plan",
    "normalize_plan": "torch_plan",
    "apply_plan": "surgery",
    "QkSplitAttention": "surgery",
    "LoadSummary": "onnx_weights",
    "load_onnx_weights": "onnx_weights",
    "student_from_onnx": "onnx_weights",
    "RoundTripReport": "roundtrip",
    "check_roundtrip": "roundtrip",
}


def __getattr__(name: str) -> Any:
    """The torch side lives in four modules, one per job: :mod:`models.surgery` (a plan applied to a torch model),
    :mod:`models.low_rank` (its factorisations), :mod:`models.onnx_weights` (a file's weights loaded into it) and
    :mod:`exporters.roundtrip` (the round-trip check); :mod:`models.torch_plan` holds :class:`PlanError`. This
    module is the command line; it imports them (and torch) on first use, so ``--help`` answers at once."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from exporters import roundtrip
    from models import onnx_weights, surgery, torch_plan

    homes = {"torch_plan": torch_plan, "surgery": surgery, "onnx_weights": onnx_weights, "roundtrip": roundtrip}
    return getattr(homes[_HOMES[name]], name)


# ------------------------------------------------------------------------------------------------------- CLI


def _parser() -> Parser:
    p = Parser(prog="python -m models.prune_torch", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("model", help="pruned ONNX file (exported by exporters.export, then the passes)")
    p.add_argument("--tolerance", type=non_negative, default=1e-4, help="max abs output difference allowed (>= 0)")
    p.add_argument("--json", help="also write the report as JSON")
    return p


@cli_main("python -m models.prune_torch")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.prune_torch pruned.onnx [--tolerance T] [--json r.json]``: 0 ok, 1 mismatch/bad file,
    2 usage error (checked before torch is imported)."""
    import logging

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from fileformat.io import check_distinct, load_model

    check_distinct([args.model], [("--json", args.json)])
    load_model(args.model)  # a missing or unreadable file is refused before torch is imported
    from exporters.roundtrip import check_roundtrip

    report = check_roundtrip(args.model, tolerance=args.tolerance)
    print(report.format())
    if args.json:
        import json

        from fileformat.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
