"""The README's "Running the commands yourself" block runs as written, from a fresh folder."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of the README's first bash block after "Running the commands yourself" (comments removed)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Running the commands yourself", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README lost its command block"
    lines = [ln.split("  #", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("source ")]


def test_readme_block_is_what_users_type() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 5 and all(c.startswith("python -m ") for c in cmds)
    for c in cmds:  # every output under runs/
        for arg in shlex.split(c):
            if "/" in arg:
                assert arg.startswith("runs/"), c


@pytest.mark.slow
def test_readme_commands_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in readme_commands():
        args = [sys.executable, *shlex.split(cmd)[1:]]
        res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        assert "Traceback" not in res.stderr, cmd
    assert (tmp_path / "runs" / "student.compress.onnx").is_file()
