"""Remove output channels of convolution layers and everything coupled to them.

``python -m passes.slice_channels model.onnx -o out.onnx --target-flops 0.25 [--scope decoder]``

Without ``--ratio``, ``--plan``, ``--target-flops`` or ``--target-params`` it removes half of each group's channels
(``--ratio 0.5``) and says how many went.

The channel groups come from :mod:`passes._core.channels` (a conv's output channels followed through BN, activations,
depthwise convs, residual sums, Concat offsets, Resize and pooling to the next layer's input channels). How many
channels each group keeps is one of:

* ``--ratio R``: every group in scope loses ``floor(R * C)`` of its ``C`` channels (``R`` in [0, 1));
* ``--target-flops F`` / ``--target-params P``: keep the fraction ``F`` of the model's FLOPs (or ``P`` of its
  parameters), with per-layer amounts from LAMP (default) or a uniform ratio, never below ``--floor`` of a layer;
* ``--plan plan.json`` (or a model whose ``vitseg.plan`` to reuse): the ``channels`` section names, per conv module
  path, the kept channel indices of the input model.

Which channels a group keeps: the highest importance, ``l2`` (default) / ``l1`` norm of the group's filters summed
over its source layers, or ``bn_scale`` (``|gamma|`` of an unfolded BatchNormalization; exporters that fold BN into
the conv fall back to ``l2`` with a note). The model's input and its outputs are never cut. The plan (``channels``
and torch-layout ``slices``, folded BN statistics included) is merged into the model's ``vitseg.plan``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fileformat.args import unit_interval
from fileformat.cli import cli_main
from passes._core.defaults import CHANNEL_METHODS, DEFAULT_RATIO, SCOPES
from passes._parser import add_budget_args, make_parser, parse_early

PASS_NAME = "slice_channels"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(f"python -m passes.{PASS_NAME}", (__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--ratio",
        type=unit_interval,
        help=f"fraction of each group's channels to remove, in [0, 1) (no --ratio, --plan or --target-* given: "
        f"{DEFAULT_RATIO})",
    )
    parser.add_argument("--plan", help="plan JSON (or a model holding vitseg.plan) whose 'channels' to apply")
    add_budget_args(parser)
    parser.add_argument("--scope", choices=SCOPES, default="all", help="which part of the model may lose channels")
    parser.add_argument(
        "--importance", choices=CHANNEL_METHODS, default="l2", help="channel importance: filter norm or |BN gamma|"
    )
    return parser


parse_early(__name__, build_parser)  # --help and argument errors answer before onnx and the engine load

import onnx

from passes._core.cli import run_pass_cli, unit_headline
from passes._core.prune import SliceChannelsConfig, load_plan_arg, prune_channels
from passes._core.report import PassReport

__all__ = ["SliceChannelsConfig", "main", "slice_channels"]


def slice_channels(
    model: onnx.ModelProto, config: SliceChannelsConfig | None = None
) -> tuple[onnx.ModelProto, PassReport]:
    """Cut conv channels of ``model`` as ``config`` says; return the new model and the report (input untouched):
    :func:`passes._core.prune.prune_channels`."""
    return prune_channels(model, config, PASS_NAME)


# ---------------------------------------------------------------------------------------------------- CLI
def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    amounts = (args.ratio, args.plan, args.target_flops, args.target_params)
    config = SliceChannelsConfig(
        ratio=DEFAULT_RATIO if all(a is None for a in amounts) else args.ratio,
        plan=load_plan_arg(args.plan) if args.plan else None,
        target_flops=args.target_flops,
        target_params=args.target_params,
        allocation=args.allocation,
        floor=args.floor,
        scope=args.scope,
        importance=args.importance,
    )
    new, report = slice_channels(model, config)
    headline = unit_headline(report, "channels", "groups", "channels", "kept")
    if headline:
        report.extra["headline"] = headline
    return new, report


@cli_main("python -m passes.slice_channels")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
