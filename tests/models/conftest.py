"""Fixtures for the data, synthetic-data and training tests: small synthetic sets written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def syn_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 8 val synthetic scenes at 96x96 (seed 0), read-only for the tests."""
    from models.synthetic import generate

    root = tmp_path_factory.mktemp("syn") / "small"
    generate(root, n_train=16, n_val=8, size=96, seed=0, workers=1)
    return root
