"""The one output writer: distinct inputs and outputs, atomic writes with the umask, swept temp files, manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fileformat.errors import PassError, UsageError
from fileformat.io import atomic_target, atomic_write_text, check_distinct, check_replaceable, write_manifest


def test_outputs_never_name_an_input(tmp_path: Path) -> None:
    src = tmp_path / "in.onnx"
    src.write_text("model")
    (tmp_path / "link.onnx").symlink_to(src)
    os.link(src, tmp_path / "hard.onnx")
    for out in (src, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "sub" / ".." / "in.onnx"):
        with pytest.raises(UsageError, match="--json .* is also an input"):
            check_distinct([src], [("--json", out)])
    with pytest.raises(UsageError, match="name the same file"):
        check_distinct([src], [("-o", tmp_path / "a.onnx"), ("--report", tmp_path / "a.onnx")])
    check_distinct([src, None], [("-o", tmp_path / "a.onnx"), ("--json", None)])  # distinct: fine


def test_atomic_writes_honour_the_umask_and_sweep_a_killed_writers_temp(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    stale = tmp_path / ".r.json.abc123.tmp"  # what a killed writer leaves
    stale.write_text("half")
    old = os.umask(0o022)
    try:
        atomic_write_text(out, "{}\n")
    finally:
        os.umask(old)
    assert out.read_text() == "{}\n" and (out.stat().st_mode & 0o777) == 0o644
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    with pytest.raises(RuntimeError), atomic_target(out) as tmp:  # a failing writer leaves the old file alone
        Path(tmp).write_text("new")
        raise RuntimeError("killed")
    assert out.read_text() == "{}\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_force_replaces_only_what_the_tool_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    check_replaceable(folder, force=False)  # empty: fine
    (folder / "model.onnx").write_text("m")
    write_manifest(folder, "runtime.bundle")
    with pytest.raises(PassError, match="--force"):
        check_replaceable(folder, force=False)
    check_replaceable(folder, force=True)  # only its own files
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(PassError, match=r"did not write \(notes.txt\)"):
        check_replaceable(folder, force=True)
