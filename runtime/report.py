"""``python -m runtime.report RUN``: write a pipeline run's report (``report.md``, ``report.json``, plots) again from
what its stages wrote; ``RUN/config.json`` says which stages those are.

The report itself is :mod:`runtime.run_report` (which ``runtime.pipeline`` writes at the end of every run); this
module is its command line, above the pipeline it rebuilds, and re-exports the report's functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fileformat.args import Parser
from fileformat.cli import cli_main
from fileformat.errors import PassError
from runtime.run_report import (
    COLUMNS,
    EQUAL_LATENCY_TOLERANCE,
    LEGEND,
    equal_latency_text,
    format_markdown,
    format_markdown_table,
    warnings_of,
    write_report,
)

__all__ = [
    "COLUMNS",
    "EQUAL_LATENCY_TOLERANCE",
    "LEGEND",
    "equal_latency_text",
    "format_markdown",
    "format_markdown_table",
    "main",
    "warnings_of",
    "write_report",
]


# ------------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m runtime.report",
        description="Write a pipeline run's report (report.md, report.json, plots) again from what its stages wrote.",
    )
    p.add_argument("run", type=Path, help="the run folder of runtime.pipeline (holding config.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    return p


@cli_main("python -m runtime.report")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 written, 1 not a run folder, 2 usage error."""
    args = _parser().parse_args(argv)
    config_file = args.run / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise PassError(
            f"{config_file}: not a pipeline run's configuration ({exc}); give a runtime.pipeline --run folder."
        ) from None
    from runtime.pipeline import Pipeline, PipelineConfig

    known = set(PipelineConfig.__dataclass_fields__)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}
    pipeline = Pipeline(PipelineConfig(**config))
    pipeline.stages()  # the files each stage writes
    report = write_report(pipeline)
    print(format_markdown_table(report))
    for line in report["warnings"]:
        print(f"warning: {line}")
    print(f"\nreport: {pipeline.run / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
