"""Loading and saving models: clear errors on bad files, atomic writes, never overwriting the input."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx

from fileformat.errors import PassError

log = logging.getLogger(__name__)

# protobuf's hard limit; above it ONNX needs external data.
_PROTO_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file (with its external data, if any) or raise :class:`PassError` saying why it cannot."""
    p = Path(path)
    if not p.is_file():
        raise PassError(f"{p}: no such file. Give the path of an .onnx model (e.g. one written by `make export`).")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own; all mean "not a model"
        raise PassError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc}).") from exc
    if not model.graph.node:
        raise PassError(f"{p}: the file parsed but holds no graph nodes; is it really an ONNX model?")
    return model


def check_output_path(src: str | os.PathLike[str] | None, dst: str | os.PathLike[str]) -> Path:
    """Refuse an output that is the input or lies in a missing directory; return the output as a Path."""
    out = Path(dst)
    if src is not None and Path(src).exists() and out.exists() and os.path.samefile(src, out):
        raise PassError(f"-o {out} is the input file; passes never overwrite their input. Choose another path.")
    if src is not None and Path(src).resolve() == out.resolve():
        raise PassError(f"-o {out} is the input file; passes never overwrite their input. Choose another path.")
    if not out.parent.is_dir():
        raise PassError(f"-o {out}: directory {out.parent} does not exist. Create it first.")
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file in the same directory, then ``os.replace``).

    A single file unless the model is over protobuf's 2 GB limit, in which case the weights go to
    ``<name>.data`` beside it.
    """
    out = Path(path)
    if not out.parent.is_dir():
        raise PassError(f"{out}: directory {out.parent} does not exist. Create it first.")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        if model.ByteSize() > _PROTO_LIMIT:
            data_name = out.name + ".data"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
