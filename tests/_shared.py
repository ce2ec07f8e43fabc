"""Helpers shared by tests in several folders (imported as ``from _shared import ...``; tests/ is on sys.path).

Not in a conftest.py: several folders have their own conftest, and ``import conftest`` would pick whichever came
first. ``perturb_`` lives in the package (:mod:`models.perturb`), where the benchmarks import it too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.perturb import perturb_

__all__ = [
    "PACKAGES",
    "ROOT",
    "package_sources",
    "perturb_",
    "run_at",
    "run_ort",
    "shared_dir",
    "shared_file",
    "symbols",
    "write_once",
]

ROOT = Path(__file__).resolve().parents[1]
#: the project's packages, bottom layer first (docs/architecture.md)
PACKAGES = ("fileformat", "models", "exporters", "passes", "runtime", "bench")


def package_sources(*packages: str) -> list[Path]:
    """The ``.py`` files of ``packages`` (every package of the project when none is named), sorted."""
    return sorted(p for pkg in packages or PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """First output of ``model`` on ``x`` (onnxruntime, CPU, one thread): what the oracle tests compare."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_at(model: onnx.ModelProto, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`run_ort` on a seeded random input of ``shape`` (a file with symbolic dimensions, at one of its sizes)."""
    return run_ort(model, np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32))


def symbols(model: onnx.ModelProto) -> list[str]:
    """The symbolic dimensions of ``model``'s first input, in order."""
    return [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim if d.dim_param]


def shared_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this test run that the pytest-xdist workers share (under the run's temporary root)."""
    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    root.mkdir(exist_ok=True)
    return root


def write_once(path: Path, build: Callable[[Path], object]) -> Path:
    """``path``, written by ``build(tmp)`` and renamed into place by the first worker that asks, behind a file lock
    (the other worker waits for it instead of making it again)."""
    from filelock import FileLock

    with FileLock(f"{path}.lock"):
        if not path.exists():
            tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
            build(tmp)
            os.replace(tmp, path)
    return path


def shared_file(factory: pytest.TempPathFactory, key: object, stem: str, build: Callable[[Path], object]) -> Path:
    """A file made once per test run, whichever worker asks first (:func:`write_once`); ``key`` names what is built,
    ``stem`` makes the name readable."""
    name = f"{stem}-{hashlib.sha1(repr(key).encode()).hexdigest()[:12]}.onnx"
    return write_once(shared_dir(factory, "shared-files") / name, build)
