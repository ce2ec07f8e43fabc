"""The one CLI convention of every pass.

``python -m passes.NAME in.onnx [-o out.onnx] [options] [--report r.json] [--force] [-v]``

* Without ``-o`` the output is ``in.NAME.onnx`` beside the input; an existing file there is replaced only with
  ``--force``. The input, and any file the command reads, is never overwritten; outputs are written atomically.
* Exit status 0: the output was written. 1: the model cannot be processed, or the pass found nothing it can act
  on (nothing is written; the message says why and what to do). 2: a usage error (a missing or contradictory
  option, a value out of its range).
* Every written model is first loaded by onnxruntime with default session options, as a user would.
* Errors are one line; ``-v`` adds the traceback and the pass's full report.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from fileformat.cli import HelpFormatter
from fileformat.errors import PassError, UsageError
from fileformat.io import check_distinct, check_output_path, load_model, save_model
from passes._core.report import PassReport

RunFn = Callable[[onnx.ModelProto, argparse.Namespace], tuple[onnx.ModelProto, PassReport]]


def pass_name(parser: argparse.ArgumentParser) -> str:
    """``prune_heads`` for the parser of ``python -m passes.prune_heads``."""
    return parser.prog.rsplit(".", 1)[-1].split()[-1]


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the common arguments: the input model, ``-o``, ``--report``, ``--force``, ``-v``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    name = prog.rsplit(".", 1)[-1]
    parser.add_argument("model", help="input ONNX model (never modified)")
    parser.add_argument(
        "-o", "--output", help=f"output ONNX path (default: IN.{name}.onnx beside the input; never the input)"
    )
    parser.add_argument("--report", help="also write the full report as JSON to this path")
    parser.add_argument("--force", action="store_true", help="replace an existing default output file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the full report, decisions, tracebacks")
    return parser


def default_output(model: str | Path, name: str) -> Path:
    """``dir/model.onnx`` -> ``dir/model.NAME.onnx``."""
    p = Path(model)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{name}.onnx")


def check_onnxruntime_loads(model: onnx.ModelProto) -> None:
    """Raise :class:`PassError` unless onnxruntime builds a CPU session for ``model`` with default options."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassError(
            f"onnxruntime cannot load the result ({msg}); nothing was written. If the message names a graph "
            "optimisation (a fusion), the file may still run with optimisations off; please report it."
        ) from exc


def run_pass_cli(parser: argparse.ArgumentParser, run: RunFn, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the pass, write model and report; return the exit status (0, 1, 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    prog = parser.prog
    try:
        if args.output is None:
            out_path = default_output(args.model, pass_name(parser))
            if out_path.exists() and not args.force:
                raise UsageError(f"{out_path} exists; give --force to replace it, or -o to write elsewhere.")
        else:
            out_path = Path(args.output)
        check_distinct([args.model], [("-o", out_path), ("--report", args.report)])
        check_output_path(out_path)
        model = load_model(args.model)
        new_model, report = run(model, args)
        if report.nothing_to_do:
            print(report.format() if args.verbose else report.summary(), file=sys.stderr)
            raise PassError(f"{report.nothing_to_do}; nothing was written.")
        check_onnxruntime_loads(new_model)
        save_model(new_model, out_path)
        if args.report:
            report.write_json(args.report)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {prog}: {exc}", file=sys.stderr)
        return 2
    except PassError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if args.verbose:
            traceback.print_exc()
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {prog}: cannot write or read a file{where}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line, and the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(
            f"error: {prog}: internal error ({type(exc).__name__}: {exc}); rerun with -v for the traceback and "
            "report it with the model.",
            file=sys.stderr,
        )
        return 1
    print(report.format() if args.verbose else report.summary())
    print(f"wrote {out_path}" + (f" and {Path(args.report)}" if args.report else ""))
    return 0
