"""Remove hidden neurons of transformer MLPs from an exported ONNX model.

``python -m passes.slice_neurons model.onnx -o out.onnx [--keep N | --ratio R | --plan plan.json] [--norm l1|l2]
[--report r.json]``

Without ``--keep``, ``--ratio`` or ``--plan`` it removes half of each MLP's neurons (``--ratio 0.5``).

An MLP is a linear layer (fc1) whose output reaches exactly one other linear layer (fc2) through elementwise ops
only, whatever the activation became in the export (GELU as ``Div, Erf, Add, Mul, Mul``; SiLU as
``Sigmoid, Mul``; ``Relu``; ...). Removing neuron ``j`` keeps, in torch terms, ``fc1.weight[j, :]``,
``fc1.bias[j]`` and ``fc2.weight[:, j]`` for the kept ``j`` only; the activation is elementwise, so
``fc2(act(fc1(x)))`` equals the unpruned MLP with fc2's rows of the removed neurons zeroed. The hidden axis is
followed by the same coupled-dimension analysis as prune_heads; an MLP it cannot follow is skipped with the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from fileformat.cli import cli_main
from passes._parser import add_unit_arguments, make_parser, parse_early


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m passes.slice_neurons", (__doc__ or "").split("\n\n")[0])
    add_unit_arguments(parser, "neurons", "MLP")
    return parser


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx

from passes._core.cli import run_pass_cli, unit_config, with_headline
from passes._core.importance import importance
from passes._core.oracle import zero_units
from passes._core.prune import UnitPruneConfig, prune_units
from passes._core.report import PassReport
from passes._core.unit import Mlp
from passes._core.units import find_mlps

__all__ = ["Mlp", "SliceNeuronsConfig", "find_mlps", "main", "neuron_importance", "slice_neurons", "zero_neurons"]

PASS_NAME = "slice_neurons"


@dataclass(frozen=True)
class SliceNeuronsConfig(UnitPruneConfig):
    """Neurons kept per MLP: ``keep``, ``ratio`` (fraction removed), ``keep_sets`` ({mlp id: indices of the given
    model}) or ``plan`` (``vitseg.plan`` format, original-model indices); ``norm`` scores."""


def neuron_importance(model: onnx.ModelProto, mlps: Sequence[Mlp], norm: str = "l2") -> dict[str, np.ndarray]:
    """``{mlp id: [hidden] scores}``: L1 or L2 norm of fc1's column and fc2's row of each neuron."""
    return importance(mlps, norm)  # the MLPs carry the (canonical) model they were found on


def slice_neurons(model: onnx.ModelProto, config: SliceNeuronsConfig) -> tuple[onnx.ModelProto, PassReport]:
    """Remove MLP neurons as ``config`` says; returns a new checked model and the report."""
    return prune_units(model, "neurons", config, PASS_NAME)


def zero_neurons(model: onnx.ModelProto, mlp: Mlp, neurons: Sequence[int]) -> onnx.ModelProto:
    """The oracle: a copy of ``model`` with fc2's rows of ``neurons`` set to zero."""
    return zero_units(model, mlp, neurons)


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    config = unit_config(SliceNeuronsConfig, args)
    return with_headline(slice_neurons(model, config), "neurons", "MLPs")  # type: ignore[arg-type]


@cli_main("python -m passes.slice_neurons")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
