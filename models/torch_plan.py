"""The plan as the torch side reads it (``vitseg.plan``, :mod:`fileformat.plan`): its error, its container check,
index checks, the module a plan entry names, and the input size a rebuilt model is probed with."""

from __future__ import annotations

from typing import Any

from torch import nn

from fileformat.errors import InputError
from fileformat.plan import check_indices
from fileformat.plan import normalize_plan as _normalize_plan
from models.registry import ModelConfig

__all__ = ["PlanError", "Slices", "normalize_plan", "plan_indices", "plan_module", "probe_size"]


class PlanError(InputError):
    """A plan (or pruned ONNX file) that does not fit the model configuration; the message says where and why."""


#: ``{tensor: {axis: kept indices}}``
Slices = dict[str, dict[int, list[int]]]


def plan_indices(where: str, kept: Any, total: int) -> list[int]:
    """``kept`` checked as distinct indices below ``total`` (:class:`PlanError` naming ``where`` otherwise)."""
    return check_indices(where, kept, total, error=PlanError)


def normalize_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Check the plan's container format (version, sections); a deep copy with all sections present."""
    return _normalize_plan(plan, error=PlanError)


def plan_module(model: nn.Module, path: str, section: str) -> nn.Module:
    """The submodule ``path`` that a ``section`` entry of the plan names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise PlanError(
            f"plan {section}: {path!r} is not a module of this model ({model.config.name}); the plan was made "
            "for another configuration."
        ) from None


def probe_size(config: ModelConfig) -> int:
    """The input size a rebuilt model is run at to check it (a Swin backbone takes only its own)."""
    return config.input_size if config.family == "swin" else 32
