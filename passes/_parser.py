"""The light half of the passes' command line: what a pass needs to build its parser and answer ``--help`` and
argument errors before onnx (half a second to import, most of it ml_dtypes), numpy and the engine load.

A pass module imports only this, :mod:`fileformat.args` and :mod:`fileformat.cli` at its top, builds its parser,
calls :func:`parse_early`, and imports the rest after it; :mod:`passes._core.cli` runs the pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fileformat.args import Parser, fraction, non_negative, non_negative_int, positive_int, unit_interval
from passes._core.defaults import DEFAULT_RATIO


def model_file(text: str) -> str:
    """The input model: a folder is refused when parsed (a missing file is the pass's to report, exit 1)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give an .onnx file")
    return text


def parse_early(module: str, build: Callable[[], argparse.ArgumentParser]) -> None:
    """At the top of a pass module, before its heavy imports: when the module runs as ``python -m passes.NAME``
    (``module == "__main__"``), parse the command line with ``build()``'s parser, so that ``--help`` and every
    argument error answer (exit 0 or 2) before onnx, numpy and the engine are imported. ``main`` parses again."""
    if module == "__main__":
        build().parse_args()


def add_unit_arguments(parser: argparse.ArgumentParser, unit: str, block: str = "block") -> None:
    """The shared ``--keep/--ratio/--plan/--norm`` options of prune_heads, slice_neurons and slice_width; none of
    the first three given means ``--ratio`` :data:`DEFAULT_RATIO`."""
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--keep", type=positive_int, help=f"{unit} kept in every {block} (>= 1)")
    how.add_argument(
        "--ratio",
        type=unit_interval,
        help=f"fraction of each {block}'s {unit} removed, in [0, 1) (none of --keep/--ratio/--plan given: "
        f"{DEFAULT_RATIO})",
    )
    how.add_argument("--plan", help=f"JSON plan naming the {unit} each {block} keeps (original-model indices)")
    add_size_argument(parser)
    parser.add_argument("--norm", choices=("l1", "l2"), default="l2", help="weight norm used to rank (default l2)")


def pass_name(parser: argparse.ArgumentParser) -> str:
    """``prune_heads`` for the parser of ``python -m passes.prune_heads``."""
    return parser.prog.rsplit(".", 1)[-1].split()[-1]


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the common arguments: the input model, ``-o``, ``--report``, ``--force``, ``-v``."""
    parser = Parser(prog=prog, description=description)
    name = prog.rsplit(".", 1)[-1]
    parser.add_argument("model", type=model_file, help="input ONNX model (never modified)")
    parser.add_argument(
        "-o", "--output", help=f"output ONNX path (default: IN.{name}.onnx beside the input; never the input)"
    )
    parser.add_argument("--report", help="also write the full report as JSON to this path")
    parser.add_argument("--force", action="store_true", help="replace an existing default output file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the full report, decisions, tracebacks")
    return parser


def add_size_argument(parser: argparse.ArgumentParser, what: str = "trace it at this size") -> None:
    """``--input-size H [W]``: the size a file with a dynamic height and width is traced at by the structural passes
    (:func:`passes._core.graph.bindings`), or checked at by ``simplify`` and ``optimize``; recorded as the written
    file's ``vitseg.input_size`` (:func:`passes._core.cli.run_pass`)."""
    parser.add_argument(
        "--input-size",
        type=positive_int,
        nargs="+",
        metavar="H [W]",
        help=f"for a file whose height and width are dynamic: {what} (default: its vitseg.input_size metadata); the "
        "written file keeps its dynamic sizes",
    )


def add_budget_args(parser: argparse.ArgumentParser, latency: bool = False) -> None:
    """The budget options shared with ``passes.compress`` (``latency``: its time budgets, allocated by HALP)."""
    add_size_argument(parser)
    parser.add_argument("--target-flops", type=fraction, help="keep this fraction of the model's FLOPs, in (0, 1]")
    parser.add_argument("--target-params", type=fraction, help="keep this fraction of the model's parameters")
    parser.add_argument(
        "--allocation",
        choices=("lamp", "uniform", "halp") if latency else ("lamp", "uniform"),
        default=None if latency else "lamp",
        help="per-layer amounts of a budget: LAMP ranking, one uniform fraction"
        + (", or HALP (importance per ms saved; the default for --target-latency, else lamp)" if latency else ""),
    )
    parser.add_argument(
        "--floor", type=unit_interval, default=0.1, help="every layer keeps at least this fraction of its units"
    )


def add_check_arguments(parser: argparse.ArgumentParser, atol_help: str) -> None:
    """``--atol``, ``--seed``, ``--batch``: the onnxruntime check an exact rewrite is held to (``passes.simplify``,
    ``passes.optimize``; :mod:`passes._core.verify`)."""
    parser.add_argument("--atol", type=non_negative, default=1e-5, help=atol_help)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random check input")
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch used for a dynamic batch dimension in the check"
    )
    add_size_argument(parser, "build the check input at this size")


def add_calibration_arguments(
    parser: argparse.ArgumentParser, purpose: str, count: int, *, required: bool = False
) -> None:
    """``--calib DATA``, ``--calib-count``, ``--calib-split``: the images a pass calibrates on
    (:func:`models.calib.calibration_feeds`); ``purpose`` says what for, ``count`` is the default number."""
    parser.add_argument(
        "--calib",
        required=required,
        metavar="DATA",
        help=f"{purpose}: LPCV-layout root (IMG/<split>/), a folder of images, or 'synthetic'",
    )
    parser.add_argument(
        "--calib-count", type=positive_int, default=count, help=f"calibration images to use (default {count})"
    )
    parser.add_argument("--calib-split", default="train", help="split of an LPCV-layout root (default train)")
