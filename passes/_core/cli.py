"""The one CLI convention of every pass (DESIGN.md section 6).

``python -m passes.NAME in.onnx -o out.onnx [options] [--report r.json]``: ``-o`` is required, the input is never
overwritten, the output is written atomically; exit 0 on success, 1 when the model cannot be processed (with a
message saying why and what to do), 2 on a usage error (argparse's own convention).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from passes._core.errors import PassError
from passes._core.io import check_output_path, load_model, save_model
from passes._core.report import PassReport

RunFn = Callable[[onnx.ModelProto, argparse.Namespace], tuple[onnx.ModelProto, PassReport]]


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the common arguments: the input model, ``-o``, ``--report``, ``-v``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("model", help="input ONNX model (never modified)")
    parser.add_argument("-o", "--output", required=True, help="output ONNX path (must differ from the input)")
    parser.add_argument("--report", help="also write the report as JSON to this path")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the pass's decisions")
    return parser


def run_pass_cli(parser: argparse.ArgumentParser, run: RunFn, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the pass, write model and report; return the exit status (0, 1; argparse exits 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        out_path = check_output_path(args.model, args.output)
        if args.report:
            check_output_path(args.model, args.report)
        model = load_model(args.model)
        new_model, report = run(model, args)
        save_model(new_model, out_path)
        if args.report:
            report.write_json(args.report)
    except PassError as exc:
        print(f"error: {parser.prog}: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    print(f"wrote {out_path}" + (f" and {Path(args.report)}" if args.report else ""))
    return 0
