"""The hand-built models of ``tests/passes/_helpers_deploy.py``, loaded by path (test dirs are not packages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_helpers_deploy_shared", Path(__file__).resolve().parents[1] / "passes" / "_helpers_deploy.py"
)
assert _spec is not None and _spec.loader is not None
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

conv_model = _mod.conv_model
qdq_model = _mod.qdq_model
layernorm_reciprocal_model = _mod.layernorm_reciprocal_model

__all__ = ["conv_model", "layernorm_reciprocal_model", "qdq_model"]
