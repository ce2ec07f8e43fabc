"""Cut a transformer's width (its embedding dimension) or its attention blocks' head channels on an ONNX model.

``python -m passes.slice_width model.onnx -o out.onnx [--keep N | --ratio R | --plan plan.json] [--kind width|head_dim]
[--norm l1|l2]``

Without ``--keep``, ``--ratio`` or ``--plan`` it removes half of each group's channels (``--ratio 0.5``).

``--kind width`` (default): the embedding dimension of each transformer (a MobileViT or Swin stage, a ViT's residual
stream) is one coupled group. It runs from the weights that make it (MobileViT's 1x1 conv-in, a patch embedding,
Swin's patch merging) through the unfold/fold reshapes, every LayerNorm (scale and bias sliced), the residual sums,
the q/k/v rows, the projection columns and the MLP, to the weights that read it (MobileViT's 1x1 conv-out, the
decoder's lateral convs). LayerNorm then takes its mean and variance over the kept channels, exactly as a torch
model built with the smaller width does: this cut is checked against that torch model (``models.prune_torch``
round trip), not by zeroing.

``--kind head_dim``: channel ``j`` of every head of an attention block at once; q/k and v are two groups (q and k
meet in the scores, v in the context), also where one fused projection makes all three. Removing a channel equals
zeroing it; ``softmax(q k^T * scale)`` keeps the original ``scale = 1/sqrt(head_dim)``. A reduction over the head
channels passes where a removed (zero) channel adds nothing to it (SwinV2's L2 norms of q and k); any other makes
the block skipped, with the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from fileformat.cli import cli_main
from passes._parser import add_unit_arguments, make_parser, parse_early

KINDS = ("width", "head_dim")


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m passes.slice_width", (__doc__ or "").split("\n\n")[0])
    add_unit_arguments(parser, "channels", "group")
    parser.add_argument("--kind", choices=KINDS, default="width", help="what to cut (default: width)")
    return parser


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import onnx

from passes._core.cli import run_pass_cli, unit_config, with_headline
from passes._core.prune import UnitPruneConfig, prune_units
from passes._core.report import PassReport

__all__ = ["KINDS", "SliceWidthConfig", "main", "slice_width"]

PASS_NAME = "slice_width"


@dataclass(frozen=True)
class SliceWidthConfig(UnitPruneConfig):
    """Channels kept per transformer (``kind="width"``) or per attention block (``kind="head_dim"``)."""

    kind: str = "width"


def slice_width(model: onnx.ModelProto, config: SliceWidthConfig) -> tuple[onnx.ModelProto, PassReport]:
    """Cut the width or the head channels as ``config`` says; returns a new checked model and the report."""
    if config.kind not in KINDS:
        raise ValueError(f"unknown kind {config.kind!r}; use one of {', '.join(KINDS)}")
    return prune_units(model, config.kind, config, PASS_NAME)


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    base = unit_config(UnitPruneConfig, args)
    config = SliceWidthConfig(keep=base.keep, ratio=base.ratio, plan=base.plan, norm=base.norm, kind=args.kind)
    where = "transformers" if args.kind == "width" else "q/k and v groups"
    unit = "width channels" if args.kind == "width" else "head channels"
    return with_headline(slice_width(model, config), unit, where)


@cli_main("python -m passes.slice_width")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
