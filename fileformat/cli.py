"""The exception boundary every command line shares.

Exit statuses: 0 success, 1 the input cannot be processed, 2 a usage error. Whatever escapes a command's own
handling becomes one line on stderr saying what went wrong, where, and what to do; ``-v``/``--verbose`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable, Sequence

from fileformat.errors import PassError, UsageError

Main = Callable[[Sequence[str] | None], int]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (``None``, ``False``) or the help text
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def cli_main(prog: str) -> Callable[[Main], Main]:
    """Decorate a ``main(argv) -> int``: turn escaping exceptions into a message and an exit status."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            verbose = "-v" in args or "--verbose" in args
            try:
                return main(argv)
            except UsageError as exc:
                _say(prog, str(exc), verbose)
                return 2
            except PassError as exc:
                _say(prog, str(exc), verbose)
                return 1
            except OSError as exc:
                where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
                _say(
                    prog,
                    f"cannot read or write{where}: {exc.strerror or exc}. Check the path and its permissions.",
                    verbose,
                )
                return 1
            except KeyboardInterrupt:
                print(f"error: {prog}: interrupted", file=sys.stderr)
                return 130
            except Exception as exc:  # a bug: one line, and the traceback with -v
                _say(
                    prog,
                    f"internal error ({type(exc).__name__}: {exc}); rerun with -v for the traceback and report it.",
                    verbose,
                )
                return 1

        return run

    return wrap


def _say(prog: str, message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    print(f"error: {prog}: {message}", file=sys.stderr)
