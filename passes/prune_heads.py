"""Remove attention heads from an exported ONNX model, physically, on the graph.

``python -m passes.prune_heads model.onnx -o out.onnx [--keep N | --ratio R | --plan plan.json] [--norm l1|l2]
[--report r.json]``

Without ``--keep``, ``--ratio`` or ``--plan`` it removes half of each block's heads (``--ratio 0.5``: the
lowest-norm ``floor(H / 2)``, every block keeping at least one) and says how many went.

Each attention block is found from its Softmax and followed by coupled-dimension analysis
(:mod:`passes._core.dims`): the head axis is traced through the q/k/v projection (fused or separate), reshapes,
transposes, splits, the scale, the scores, per-head constants (Swin's relative-position bias and masks) and the
context, to the output projection's rows. Removing head ``h`` keeps, in torch terms,

    qkv.weight[s * H * d + h * d : s * H * d + (h + 1) * d, :] for s in q, k, v   (and the same rows of qkv.bias)
    proj.weight[:, h * d : (h + 1) * d]

and rewrites every shape entry that holds the head count (by its position, never by its value). The result equals
the unpruned model with the removed heads' projection rows zeroed (the tests hold it to 1e-4). A block that cannot
be followed safely is skipped with its reason; the plan that was applied is merged into ``vitseg.plan``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from fileformat.cli import cli_main
from passes._parser import add_unit_arguments, make_parser, parse_early


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m passes.prune_heads", (__doc__ or "").split("\n\n")[0])
    add_unit_arguments(parser, "heads", "attention block")
    return parser


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx

from passes._core.cli import run_pass_cli, unit_config, with_headline
from passes._core.importance import importance
from passes._core.oracle import zero_units
from passes._core.prune import UnitPruneConfig, prune_units
from passes._core.report import PassReport
from passes._core.unit import AttentionBlock
from passes._core.units import find_attention_blocks

__all__ = [
    "AttentionBlock",
    "PruneHeadsConfig",
    "find_attention_blocks",
    "head_importance",
    "main",
    "prune_heads",
    "zero_heads",
]

PASS_NAME = "prune_heads"


@dataclass(frozen=True)
class PruneHeadsConfig(UnitPruneConfig):
    """Heads kept per block: ``keep`` (count), ``ratio`` (fraction removed), ``keep_sets`` ({block id: head
    indices of the given model}) or ``plan`` (``vitseg.plan`` format, original-model indices); ``norm`` scores."""


def head_importance(
    model: onnx.ModelProto, blocks: Sequence[AttentionBlock], norm: str = "l2"
) -> dict[str, np.ndarray]:
    """``{block id: [num_heads] scores}``: L1 or L2 norm of each head's q/k/v columns and projection rows."""
    return importance(blocks, norm)  # the blocks carry the (canonical) model they were found on


def prune_heads(model: onnx.ModelProto, config: PruneHeadsConfig) -> tuple[onnx.ModelProto, PassReport]:
    """Remove heads as ``config`` says; returns a new checked model and the report (``model`` is not changed)."""
    return prune_units(model, "heads", config, PASS_NAME)


def zero_heads(model: onnx.ModelProto, block: AttentionBlock, heads: Sequence[int]) -> onnx.ModelProto:
    """The oracle: a copy of ``model`` with the projection rows of ``heads`` of ``block`` set to zero."""
    return zero_units(model, block, heads)


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    config = unit_config(PruneHeadsConfig, args)
    return with_headline(prune_heads(model, config), "heads", "attention blocks")  # type: ignore[arg-type]


@cli_main("python -m passes.prune_heads")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
