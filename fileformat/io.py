"""Loading and saving models: clear errors on bad files, atomic writes, never overwriting the input."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fileformat.errors import PassError, UsageError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# protobuf's hard limit; above it ONNX needs external data.
_PROTO_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file (with its external data, if any) or raise :class:`PassError` saying why it cannot."""
    p = Path(path)
    if not p.is_file():
        raise PassError(f"{p}: no such file. Give the path of an .onnx model (e.g. one written by `make export`).")
    import onnx  # here, not at the top: a command's --help and usage errors answer without it (0.5 s)

    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own; all mean "not a model"
        raise PassError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc}).") from exc
    if not model.graph.node:
        raise PassError(f"{p}: the file parsed but holds no graph nodes; is it really an ONNX model?")
    return model


def check_output_path(dst: str | os.PathLike[str]) -> Path:
    """Refuse an output that is a folder or lies in a missing folder; return the output as a Path. (Outputs against
    inputs: :func:`check_distinct`.)"""
    out = Path(dst)
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give a file path.")
    if not out.parent.is_dir():
        raise PassError(f"-o {out}: directory {out.parent} does not exist. Create it first.")
    return out


def _same_file(a: Path, b: Path) -> bool:
    """Same resolved path, or the same inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(
    reads: Iterable[str | os.PathLike[str] | None], writes: Iterable[tuple[str, str | os.PathLike[str] | None]]
) -> None:
    """Before any work: no output (``(option, path)``) is an input or another output. Raise :class:`UsageError`
    naming the option; resolved paths and inodes are compared, so symbolic and hard links are caught."""
    ins = [Path(p) for p in reads if p is not None and str(p)]
    outs = [(flag, Path(p)) for flag, p in writes if p is not None and str(p)]
    for flag, out in outs:
        for src in ins:
            if _same_file(out, src):
                raise UsageError(
                    f"{flag} {out} is also an input ({src}); inputs are never overwritten. Choose another path."
                )
    for i, (flag, out) in enumerate(outs):
        for flag2, out2 in outs[i + 1 :]:
            if _same_file(out, out2):
                raise UsageError(f"{flag} and {flag2} name the same file ({out}); give two paths.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the umask lets it be: what ``open``/``mkdir`` would give (``mkstemp``/``mkdtemp`` give 0600/0700)."""
    return mode & ~_umask()


def _temp_for(out: Path, suffix: str = ".tmp") -> str:
    """A temporary file beside ``out`` (removing ones a killed writer of ``out`` left), with the umask's mode."""
    for stale in out.parent.glob(f".{out.name}.*{suffix}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.fchmod(fd, umask_mode(0o666))  # mkstemp's 0600 would outlive the rename
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[str]:
    """``with atomic_target(p) as tmp: write(tmp)``: ``p`` appears complete or not at all (``os.replace``), with
    the umask's mode; the temporary file is removed on failure, and one a killed writer left is swept first.
    ``suffix`` keeps an extension that a writer reads (matplotlib's ``.png``)."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{out} is a directory; give a file path.")
    tmp = _temp_for(out, suffix)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file in the same directory, then ``os.replace``).

    A single file unless the model is over protobuf's 2 GB limit, in which case the weights go to
    ``<name>.data`` beside it.
    """
    import onnx

    out = Path(path)
    if not out.parent.is_dir():
        raise PassError(f"{out}: directory {out.parent} does not exist. Create it first.")
    with atomic_target(out) as tmp:
        if model.ByteSize() > _PROTO_LIMIT:
            data_name = out.name + ".data"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        else:
            onnx.save_model(model, tmp)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    out = Path(path)
    with atomic_target(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return out


# ---------------------------------------------------------------------------------------------- output folders
MANIFEST = ".vitseg-manifest.json"


def write_manifest(folder: str | os.PathLike[str], tool: str) -> None:
    """Record every file under ``folder`` as written by ``tool`` (so a later ``--force`` may replace them)."""
    root = Path(folder)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    (root / MANIFEST).write_text(json.dumps({"tool": tool, "files": files}, indent=1) + "\n", encoding="utf-8")


def check_replaceable(folder: str | os.PathLike[str], force: bool, option: str = "-o") -> None:
    """A non-empty output folder is replaced only with ``force``, and only when every file in it is one this
    toolchain wrote there (its manifest says so); raise :class:`PassError` naming the foreign files otherwise."""
    root = Path(folder)
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not force:  # a usage error: the answer is an option (--force) or another folder
        raise UsageError(f"{option} {root} exists and is not empty; choose a new folder or pass --force to replace it.")
    try:
        listed = set(json.loads((root / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    foreign = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
        and str(p.relative_to(root)) not in listed
    )  # fmt: skip
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PassError(
            f"{option} {root} holds files this tool did not write ({shown}); --force replaces only its own output. "
            "Move them, or choose another folder."
        )
