"""Arguments checked before any work: the one parser class and the checks every command line shares.

* :class:`Parser`: ``argparse`` with the toolchain's help format, whose errors are one line naming the program and
  the option, then "see --help" (exit status 2), instead of the usage block.
* ``type=`` helpers (:func:`finite`, :func:`non_negative`, :func:`positive`, :func:`fraction`, :func:`unit_interval`,
  :func:`percent`, :func:`positive_int`, :func:`non_negative_int`, :func:`int_in`): a value out of its range is a
  usage error at parse time, before any import of torch or onnxruntime and before any data is read.
* Folders (:func:`check_output_folder`): an output folder must be creatable or writable, must not be a file, and
  may neither be nor lie inside an input folder (a data set, a run); a clash raises :class:`UsageError`.
* Earlier outputs (:func:`check_not_replacing`): an existing output is replaced only with ``--force``, which
  means the same thing in every command: "replace my earlier output".

Checks that know the toolchain's own data (model names, data splits, batch against the images) live beside that
data (``models.configs.model_name``, ``models.data.check_split``), built on these.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from fileformat.cli import HelpFormatter
from fileformat.errors import UsageError

__all__ = [
    "Parser",
    "check_not_replacing",
    "check_output_file",
    "check_output_folder",
    "finite",
    "fraction",
    "int_in",
    "non_negative",
    "non_negative_int",
    "percent",
    "positive",
    "positive_int",
    "target_name",
    "unit_interval",
]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and one-line errors:
    ``error: PROG: argument --ratio: 1.5 is not in [0, 1); see --help`` (exit status 2)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        text = " ".join(str(message).split())  # one line, whatever the message held
        self.exit(2, f"error: {self.prog}: {text}; see --help\n")


# ------------------------------------------------------------------------------------------------ numbers


def _float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _named(fn: Callable[[str], object], name: str) -> Callable[[str], object]:
    fn.__name__ = name  # argparse names the type in some messages
    return fn


def finite(text: str) -> float:
    """A finite float (no nan or inf)."""
    return _float(text)


def non_negative(text: str) -> float:
    """A finite float >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a value >= 0")
    return value


def positive(text: str) -> float:
    """A finite float > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive; give a value > 0")
    return value


def fraction(text: str) -> float:
    """A fraction in (0, 1] (a part that is kept)."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def unit_interval(text: str) -> float:
    """A fraction in [0, 1) (a part that is removed)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def percent(text: str) -> float:
    """A percentage in [0, 100]."""
    value = _float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage in [0, 100]")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a whole number >= 0")
    return value


def int_in(lo: int, hi: int, why: str = "") -> Callable[[str], int]:
    """A whole number in ``[lo, hi]``; ``why`` says what the bounds stand for."""

    def check(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is not in [{lo}, {hi}]" + (f" ({why})" if why else ""))
        return value

    return _named(check, f"int in [{lo}, {hi}]")  # type: ignore[return-value]


def target_name(text: str) -> str:
    """A device profile name or alias (``fileformat.targets``), or a usage error listing them."""
    from fileformat.targets import UnknownTargetError, get_target

    try:
        get_target(text)
    except UnknownTargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ------------------------------------------------------------------------------------------------ folders


def _inside(child: Path, parent: Path) -> bool:
    """``child`` is ``parent`` or lies under it (resolved: links count)."""
    c, p = child.resolve(), parent.resolve()
    if c == p or p in c.parents:
        return True
    try:  # the same folder reached through a bind mount or a hard-linked path
        return c.exists() and p.exists() and os.path.samefile(c, p)
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _refuse_inside(option: str, out: Path, inputs: Iterable[tuple[str, object]], what: str = "") -> None:
    for flag, src in inputs:
        if src is None or not str(src):
            continue
        if Path(src).is_dir() and _inside(out, Path(src)):
            where = "is" if out.resolve() == Path(src).resolve() and not what else "is inside"
            raise UsageError(
                f"{option} {what or out} {where} the input folder {flag} {src}; outputs never go into an input "
                "folder. Choose another path."
            )


def check_output_file(option: str, path: str | os.PathLike[str] | None, inputs: Iterable[tuple[str, object]]) -> None:
    """An output file (``--json``) must not be written into one of the input folders (``(option, folder)``)."""
    if path is not None and str(path):
        _refuse_inside(option, Path(path).parent, inputs, str(path))


def check_output_folder(option: str, folder: str | os.PathLike[str], inputs: Iterable[tuple[str, object]] = ()) -> Path:
    """Before any work: ``folder`` (the value of ``option``) can be a folder this command writes.

    Refused with :class:`UsageError`: a path that is a file; a folder that cannot be created or written (the first
    existing ancestor is not a writable folder); a folder that is, or lies inside, one of the ``inputs``
    (``(option, folder)`` pairs, e.g. ``("--data", root)``), so nothing is ever written into a data set."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is a file; give a folder.")
    _refuse_inside(option, out, inputs)
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise UsageError(f"{option} {out}: {base} is a file, so the folder cannot be created. Choose another path.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {out}: {base} is not writable. Choose another folder.")
    return out


def check_not_replacing(option: str, path: str | os.PathLike[str], force: bool, what: str = "") -> None:
    """An existing output (a file, or a folder holding files) is replaced only with ``--force``: raise
    :class:`UsageError` naming ``option`` otherwise. ``what`` says what is there ("a distillation run")."""
    p = Path(path)
    if force or not p.exists():
        return
    if p.is_dir() and not any(p.iterdir()):
        return
    there = f" and holds {what}" if what else ""
    raise UsageError(
        f"{option} {p} exists{there}; give --force to replace it, or choose another "
        f"{'folder' if p.is_dir() else 'path'}."
    )


def stderr_line(prog: str, message: str) -> None:
    """``error: PROG: MESSAGE`` on stderr, on one line."""
    print(f"error: {prog}: {' '.join(message.split())}", file=sys.stderr)
