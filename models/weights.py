"""Loading weights: timm's pretrained download (online only) and local files (safetensors or torch)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fileformat.errors import InputError

log = logging.getLogger(__name__)


class WeightsError(InputError):
    """A weights file that cannot be read or does not fit the model."""


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``; a file that holds more than tensors and plain containers is refused
    in our words (torch's own message suggests ``weights_only=False``, which would run code from the file)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc):  # not a class it refused: the bytes are no torch file
            raise WeightsError(f"{path}: not a readable torch file (no checkpoint or state dict in it).") from exc
        raise WeightsError(
            f"{path}: the file holds pickled Python objects, not only tensors, and this toolchain never unpickles "
            "code from a file. Save the weights as a state dict (torch.save(model.state_dict(), path)) or as "
            ".safetensors."
        ) from exc
    except Exception as exc:  # a truncated or foreign file (torch raises many types for it)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable torch file ({first}).") from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code is unpickled).

    A training checkpoint (a dict with a ``"model"`` entry) gives its model state.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch_load(p)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(
            f"{p}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Give a .safetensors file or a torch state dict saved with torch.save."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{p}: not a state dict (name -> tensor).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str, *, strict: bool = True) -> None:
    """Copy ``state`` into ``module``, raising :class:`WeightsError` naming the mismatches when it does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if wrong or (strict and (missing or unexpected)) or len(missing) == len(own):
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} model tensors missing from the file (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors in the file (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(
            f"{source} does not match the model: " + "; ".join(parts) + ". Check that the file was saved from the "
            "same configuration (--model) and, for a pruned model, the same plan."
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("loaded %d tensors from %s", len(own) - len(missing), source)


def load_pretrained_backbone(module: nn.Module, timm_name: str) -> None:
    """Fetch timm's ImageNet weights for ``timm_name`` and copy those that fit ``module`` (needs the network)."""
    import timm

    try:
        ref = timm.create_model(timm_name, pretrained=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot download pretrained weights for {timm_name} ({type(exc).__name__}: {exc}). This machine "
            "may be offline: download the timm checkpoint elsewhere and pass it with --weights FILE "
            "(safetensors or a torch state dict), or use random initialisation (pretrained=False)."
        ) from exc
    state = ref.state_dict()
    if hasattr(module, "net"):  # Swin's feature wrapper keeps timm's model under .net
        state = {"net." + k.replace("layers.", "layers_", 1): v for k, v in state.items()}
    load_into(module, state, f"timm:{timm_name}", strict=False)
