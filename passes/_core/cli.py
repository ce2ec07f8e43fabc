"""The one CLI convention of every pass.

``python -m passes.NAME in.onnx [-o out.onnx] [options] [--report r.json] [--force] [-v]``

* Without ``-o`` the output is ``in.NAME.onnx`` beside the input; an existing file there is replaced only with
  ``--force``. The input, and any file the command reads, is never overwritten; outputs are written atomically.
* Exit status 0: the output was written. 1: the model cannot be processed, or the pass found nothing it can act
  on (nothing is written; the message says why and what to do). 2: a usage error (a missing or contradictory
  option, a value out of its range).
* Every written model is first loaded by onnxruntime with default session options, as a user would.
* Errors are one line; ``-v`` adds the traceback and the pass's full report. Argument errors are one line too
  (:class:`fileformat.args.Parser`), and onnxruntime's own warnings are shown only with ``-v``.
* A structural pass given no amount (no ``--keep``/``--ratio``/``--plan``) cuts :data:`DEFAULT_RATIO` of each
  block's units, and its summary says in words what went ("18 of 36 heads removed in 9 of 9 attention blocks").
* ``--help`` and argument errors answer before onnx (half a second to import, most of it ml_dtypes) and the engine
  are imported: a pass module builds its parser from :mod:`passes._parser` (light) and calls ``parse_early`` before
  its heavy imports (this package's ``__init__`` loads onnx).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fileformat.errors import PassError, UsageError
from fileformat.io import check_distinct, check_output_path, load_model, save_model
from fileformat.metadata import write_metadata
from passes._parser import (
    DEFAULT_RATIO,
    add_calibration_arguments,
    add_check_arguments,
    add_unit_arguments,
    make_parser,
    parse_early,
    pass_name,
)

__all__ = [
    "DEFAULT_RATIO",
    "add_calibration_arguments",
    "add_check_arguments",
    "add_unit_arguments",
    "check_onnxruntime_loads",
    "default_output",
    "make_parser",
    "parse_early",
    "pass_name",
    "quiet_onnxruntime",
    "read_plan_file",
    "run_pass_cli",
    "unit_config",
    "unit_headline",
    "with_headline",
]

if TYPE_CHECKING:
    import onnx

    from passes._core.report import PassReport

RunFn = Callable[["onnx.ModelProto", argparse.Namespace], "tuple[onnx.ModelProto, PassReport]"]


def default_output(model: str | Path, name: str) -> Path:
    """``dir/model.onnx`` -> ``dir/model.NAME.onnx``."""
    p = Path(model)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{name}.onnx")


def quiet_onnxruntime(verbose: bool = False) -> None:
    """onnxruntime's own log (the coloured constant-folding warnings an FP16 model draws, 12-18 lines) only with
    ``-v``: errors still show. Process-wide, so the sessions a pass builds are quiet too."""
    import onnxruntime as ort

    ort.set_default_logger_severity(2 if verbose else 3)


def check_onnxruntime_loads(model: onnx.ModelProto) -> None:
    """Raise :class:`PassError` unless onnxruntime builds a CPU session for ``model`` with default options (its log
    at the process default: :func:`quiet_onnxruntime`)."""
    from fileformat.session import SessionConfig, load_session

    try:
        load_session(model, SessionConfig(spinning=True, log_severity=None))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassError(
            f"onnxruntime cannot load the result ({msg}); nothing was written. If the message names a graph "
            "optimisation (a fusion), the file may still run with optimisations off; please report it."
        ) from exc


def unit_headline(
    report: PassReport, unit: str, where: str, before_key: str | None = None, after_key: str | None = None
) -> str | None:
    """``"18 of 36 heads removed in 9 of 9 attention blocks"`` from the rows of a unit pass: per row the count
    before and after (``before_key``/``after_key``; none given: columns 1 and 2). None when there are no rows."""
    if not report.rows or len(report.columns) < 3:
        return None
    before_key = before_key or report.columns[1]
    after_key = after_key or report.columns[2]
    total = removed = touched = 0
    for row in report.rows:
        try:
            before, after = int(row[before_key]), int(str(row[after_key]).split()[0])
        except (KeyError, TypeError, ValueError):
            return None
        total += before
        removed += before - after
        touched += before > after
    return f"{removed} of {total} {unit} removed in {touched} of {len(report.rows)} {where}"


def read_plan_file(path: str) -> dict[str, Any]:
    """Load a ``--plan`` JSON file or raise :class:`PassError` saying what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise PassError(f"--plan {p}: no such file.")
    try:
        plan = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PassError(f"--plan {p}: not valid JSON ({exc}).") from exc
    if not isinstance(plan, dict):
        raise PassError(f"--plan {p}: expected a JSON object mapping blocks to kept indices.")
    return plan


Config = TypeVar("Config")


def unit_config(cls: Callable[..., Config], args: argparse.Namespace) -> Config:
    """The config of a unit pass (``cls``: a ``UnitPruneConfig``) from its shared options
    (:func:`passes._parser.add_unit_arguments`): ``--keep``, ``--ratio``, ``--plan`` (read with
    :func:`read_plan_file`), ``--norm``; none of the first three given means ``--ratio`` :data:`DEFAULT_RATIO`."""
    plan = read_plan_file(args.plan) if args.plan else None
    ratio = DEFAULT_RATIO if args.keep is None and args.ratio is None and plan is None else args.ratio
    return cls(keep=args.keep, ratio=ratio, plan=plan, norm=args.norm)


def with_headline(
    result: tuple[onnx.ModelProto, PassReport], unit: str, where: str
) -> tuple[onnx.ModelProto, PassReport]:
    """Put "N of M UNIT removed in K of B WHERE" (:func:`unit_headline`) into the report's summary
    (``extra["headline"]``)."""
    headline = unit_headline(result[1], unit, where)
    if headline:
        result[1].extra["headline"] = headline
    return result


def _summary(report: PassReport, verbose: bool) -> str:
    """The pass's summary, its first line in words (``report.extra["headline"]``) rather than a row count."""
    if verbose:
        return report.format()
    lines = report.summary().splitlines()
    if lines:
        headline = report.extra.get("headline")
        lines[0] = f"{report.pass_name}: " + (headline or ("modified" if report.modified else "unchanged"))
    return "\n".join(lines)


def run_pass_cli(parser: argparse.ArgumentParser, run: RunFn, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the pass, write model and report; return 0. Errors propagate to the command's one
    boundary (:func:`fileformat.cli.cli_main`, which decorates every pass's ``main``): exit status 1 or 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    src = Path(args.model)
    if src.is_dir():
        raise UsageError(f"model {src} is a folder; give an .onnx file.")
    if not src.exists():
        load_model(src)  # says what is missing, and what to give
    if args.output is None:
        out_path = default_output(args.model, pass_name(parser))
        if out_path.exists() and not args.force:
            raise UsageError(f"{out_path} exists; give --force to replace it, or -o to write elsewhere.")
    else:
        out_path = Path(args.output)
    check_distinct([args.model], [("-o", out_path), ("--report", args.report)])
    check_output_path(out_path)
    quiet_onnxruntime(args.verbose)
    model = load_model(args.model)
    size = getattr(args, "input_size", None)
    if size:  # the size a dynamic height and width are traced at (the file's own metadata otherwise)
        if len(size) > 2:
            raise UsageError(f"--input-size {' '.join(map(str, size))}: give H, or H W.")
        write_metadata(model, {"input_size": [size[0], size[-1]]})
    new_model, report = run(model, args)
    if report.nothing_to_do:
        print(_summary(report, args.verbose), file=sys.stderr)
        raise PassError(f"{report.nothing_to_do}; nothing was written.")
    check_onnxruntime_loads(new_model)
    save_model(new_model, out_path)
    if args.report:
        report.write_json(args.report)
    print(_summary(report, args.verbose))
    print(f"wrote {out_path}" + (f" and {Path(args.report)}" if args.report else ""))
    return 0
