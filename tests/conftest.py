"""Shared fixtures: small exported models, built once per test run (both pytest-xdist workers) and cached on disk.

Weights are perturbed away from their init before export (docs/field-notes.md section 5: with init weights the legacy
exporter merges equal initializers, which hides bugs of passes that edit shared tensors).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from _shared import perturb_, shared_file

# under pytest-xdist (`make test`) each of the two workers takes one core
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``exported(model, size=64, opset=17, exporter="legacy", fused_attn=None, seed=0, fresh=False) -> Path``
    (cached). ``fresh``: the untouched initialisation, as a user's untrained model (equal tensors get merged)."""
    from exporters.export import ExportOptions, export_torch_model
    from models.registry import build_model, get_config

    cache: dict[tuple, Path] = {}  # in this worker; the files are shared by the workers (shared_file)

    def make(
        model: str = "mobilevit_xxs",
        size: int = 64,
        opset: int = 17,
        exporter: str = "legacy",
        fused_attn: bool | None = None,
        seed: int = 0,
        fresh: bool = False,
        **overrides: object,
    ) -> Path:
        key = (model, size, opset, exporter, fused_attn, seed, fresh, tuple(sorted(overrides.items())))
        if key not in cache:

            def build(path: Path) -> None:
                if get_config(model).family == "swin":
                    overrides.setdefault("input_size", size)
                torch.manual_seed(seed)
                net = build_model(model, **overrides)
                if not fresh:
                    perturb_(net, seed)
                opts = ExportOptions(
                    model=model, input_size=size, opset=opset, exporter=exporter, fused_attn=fused_attn
                )
                export_torch_model(net, path, opts)

            cache[key] = shared_file(tmp_path_factory, key, f"{model}_{size}_{exporter}_{opset}", build)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def load() -> Callable[[Path], onnx.ModelProto]:
    return lambda p: onnx.load(str(p))


#: the test modules that take longest on 2 cores (a whole pipeline run; the README's commands; exports at two
#: opsets with both exporters; trained models), started first: `make test` sends whole modules to its two workers
#: (`--dist loadscope`, so that a module's fixtures are built once), and a long module started last would leave one
#: worker waiting for the other
LONG_FIRST = (
    "tests/runtime/test_pipeline.py",
    "tests/test_readme.py",
    "tests/passes/test_zoo.py",
    "tests/exporters/test_export.py",
    "tests/passes/test_patterns.py",
    "tests/models/test_prune_torch.py",
    "tests/models/test_distill.py",
    "tests/passes/test_fp16.py",
    "tests/passes/test_latency.py",
    "tests/passes/test_importance.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order within a module, and of the other modules, is kept
