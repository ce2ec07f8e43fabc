"""Short, reproducible training of a registered model on LPCV-layout data (one loop, reused by distillation).

``python -m models.train --model mobilevit_xxs --data ROOT --steps 200 --batch-size 4 --crop 128 --out runs/x/``

* Model: a registered configuration (``models.registry``) with ``TrainConfig.model_overrides`` applied
  (``--decoder-width N``, ``--input-size N``). A Swin backbone is built for one input size: unless told otherwise it
  is the crop (``--model swin_t_upernet512 --crop 128`` builds a 128 px teacher), and the evaluation at the end
  resizes each image to it. The overrides and the resulting ``ModelConfig`` are recorded in the checkpoint, so
  :func:`model_from_checkpoint` rebuilds the same model; ``exporters.export --weights`` needs the same
  ``--decoder-width`` (and, for Swin, ``--input-size``) given again.
* Loss: cross-entropy over pixels with ``ignore_index`` 255 (default :class:`CrossEntropyLoss`); any
  :class:`LossFn` can replace it (distillation adds a teacher term this way, see below).
* Optimiser: AdamW; learning rate ``lr * (1 - step / steps) ** poly_power`` after an optional linear warmup.
* Data: random scale, rotation, flip, colour jitter and a crop of ``crop x crop`` (``models.data.AugmentConfig``).
  The sample order is a pure function of ``(seed, step)``: step ``s`` takes stream positions ``s*B .. s*B+B-1``;
  position ``p`` is sample ``perm_e[p mod n]`` of epoch ``e = p div n``, ``perm_e`` a permutation drawn from
  ``default_rng([seed, e])``; each sample's augmentation is drawn from ``default_rng([seed, e, index])``. A resumed
  run therefore sees exactly the batches the uninterrupted run would have seen.
* Checkpoints: ``OUT/checkpoint.pt`` every ``checkpoint_every`` steps and at the end, written to a temp file and
  ``os.replace``-d into place: ``{"model", "optimizer", "scheduler", "step", "rng", "config"}`` (plus ``"loss"``
  when the loss has parameters). Loadable with ``torch.load(weights_only=True)``; ``exporters.export --weights``
  reads its ``"model"`` entry. ``--resume`` continues from it.
* Several processes: inside a ``torch.distributed`` process group (``torchrun``) the model is wrapped in
  DistributedDataParallel and process ``r`` of ``W`` takes keys ``[r::W]`` of every batch; process 0 alone writes
  checkpoints and metrics and evaluates.
* At the end, the model is scored on the validation split (``runtime.evaluate``) and ``OUT/metrics.json`` written.
* Progress: ``train(..., progress=LABEL)`` (the command line's default; ``--no-progress`` or ``-q`` turn it off) shows
  a tqdm bar on stderr with the step out of the total, the mean loss since the last log line, the learning rate and
  the time left; it also runs when stderr is a pipe (``runtime.pipeline`` shows it and keeps it in the stage log).
* torch is imported when a run starts, not with this module: ``python -m models.train --help`` answers at once.

Extending (distillation): pass ``loss_fn`` to :func:`train`; it gets the model output and the :class:`Batch`
(images, masks, sample keys) and returns ``(loss, {name: value})``. A loss that is an ``nn.Module`` with parameters
(e.g. feature adapters) has them optimised and checkpointed with the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fileformat.args import (
    Parser,
    check_output_folder,
    int_in,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
)
from fileformat.cli import cli_main
from fileformat.errors import InputError, MissingInputError, PassError, UsageError
from fileformat.io import atomic_target, atomic_write_text
from models.configs import CONFIGS, model_name
from models.constants import IGNORE_INDEX
from models.data import AugmentConfig, DataError, LPCVDataset, check_split

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Batch",
    "CrossEntropyLoss",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "add_loop_arguments",
    "loop_argument_error",
    "batch_keys",
    "load_checkpoint",
    "main",
    "model_from_checkpoint",
    "save_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in each checkpoint and in ``OUT/train_config.json``)."""

    model: str = "mobilevit_xxs"
    data: str = "data/synthetic"
    out: str = "runs/train"
    model_overrides: dict[str, Any] | None = None
    weights: str | None = None
    pretrained: bool = False
    steps: int = 200
    batch_size: int = 4
    crop: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_degrees: float = 10.0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    device: str = "cpu"  # "cuda": model, loss and batches on the GPU; checkpoints and the result stay on the CPU
    train_split: str = "train"
    eval_split: str | None = "val"
    eval_limit: int | None = None
    eval_at_start: bool = False
    ignore_index: int = IGNORE_INDEX

    def augment_config(self) -> AugmentConfig:
        """The augmentation pipeline of this run."""
        return AugmentConfig(
            crop_size=(self.crop, self.crop),
            scale_range=tuple(self.scale_range),  # type: ignore[arg-type]
            rotate_degrees=self.rotate_degrees,
            ignore_index=self.ignore_index,
        )


@dataclass
class Batch:
    """One training batch: ``images`` N x 3 x H x W normalised, ``masks`` N x H x W int64, ``keys`` the
    ``(sample index, epoch)`` of each item (stable ids, e.g. for cached teacher outputs), ``step`` 0-based."""

    images: torch.Tensor
    masks: torch.Tensor
    keys: list[tuple[int, int]]
    step: int


class LossFn(Protocol):
    """``(model output, batch) -> (scalar loss to minimise, {component name: float} for the log)``."""

    def __call__(self, outputs: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class CrossEntropyLoss:
    """Mean pixel cross-entropy ``-1/|V| sum_{p in V} log softmax(z_p)[y_p]`` over non-ignored pixels ``V``.

    A plain callable (it has no parameters), not an ``nn.Module``: this module is imported without torch.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        import torch.nn.functional as F

        if outputs.shape[-2:] != batch.masks.shape[-2:]:  # N x C x h x w -> N x C x H x W
            outputs = F.interpolate(outputs, size=batch.masks.shape[-2:], mode="bilinear", align_corners=False)
        if not (batch.masks != self.ignore_index).any():
            loss = outputs.sum() * 0.0  # every pixel ignored: no signal, but keep the graph
        else:
            loss = F.cross_entropy(outputs, batch.masks, ignore_index=self.ignore_index)
        return loss, {"ce": float(loss.detach())}


@dataclass
class TrainResult:
    """What a run did: final step, loss log, checkpoint path and the evaluation (if any)."""

    step: int
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    metrics_at_start: dict[str, Any] | None = None
    seconds: float = 0.0


# -------------------------------------------------------------------------------------------- data ordering


def batch_keys(step: int, batch_size: int, num_samples: int, seed: int) -> list[tuple[int, int]]:
    """The ``(index, epoch)`` keys of the batch at ``step`` (see the module docstring)."""
    keys = []
    perms: dict[int, np.ndarray] = {}
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(p, num_samples)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_samples)
        keys.append((int(perms[epoch][pos]), epoch))
    return keys


class _StepBatches:
    """Batch sampler (``DataLoader(batch_sampler=...)``) yielding :func:`batch_keys` for steps ``start .. stop - 1``."""

    def __init__(
        self, start: int, stop: int, batch_size: int, num_samples: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.start, self.stop = start, stop
        self.batch_size, self.num_samples, self.seed = batch_size, num_samples, seed
        self.rank, self.world = rank, world  # under torchrun each process takes keys[rank::world] of every batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for s in range(self.start, self.stop):
            yield batch_keys(s, self.batch_size, self.num_samples, self.seed)[self.rank :: self.world]


# ------------------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    """torch, numpy (global) and python RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    import torch

    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {
        "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "pos": np_state["state"]["pos"],
    }
    return {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {
        "key": np.asarray(np_state["state"]["key"].numpy(), dtype=np.uint32),
        "pos": int(np_state["state"]["pos"]),
    }
    np.random.set_state(np_state)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """``torch.save`` through :func:`fileformat.io.atomic_target` (never a half-written checkpoint)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint not found: {path}")
    from models.weights import torch_load

    return torch_load(path)


def model_from_checkpoint(path: Path | str) -> nn.Module:
    """Rebuild the model a checkpoint was trained from and load its weights (eval mode).

    The recorded ``ModelConfig`` (``config["model_config"]``) is rebuilt as is; a checkpoint without one falls back
    to the registered ``config["model"]`` with ``config["model_overrides"]``.
    """
    from models.registry import ModelConfig, build_model

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    recorded = cfg.get("model_config")
    if isinstance(recorded, dict):
        model = build_model(ModelConfig.from_dict(recorded))
    else:
        model = build_model(cfg["model"], **(cfg.get("model_overrides") or {}))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _resolve_model_overrides(config: TrainConfig) -> TrainConfig:
    """``config`` with the model's input size made explicit: a Swin backbone is built for the crop unless
    ``model_overrides`` names an ``input_size`` (other families: unchanged). Unknown model names pass through."""
    from models.registry import CONFIGS

    overrides = {k: v for k, v in (config.model_overrides or {}).items() if v is not None}
    base = CONFIGS.get(config.model)
    if base is not None and base.family == "swin" and "input_size" not in overrides:
        overrides["input_size"] = config.crop
    return replace(config, model_overrides=overrides or None)


# ------------------------------------------------------------------------------------------------------ loop


def _poly(config: TrainConfig) -> Any:
    """LR factor at step ``s``: linear warmup to 1 over ``warmup_steps``, then ``(1 - s/steps) ** poly_power``."""
    steps, warm, power = max(1, config.steps), config.warmup_steps, config.poly_power

    def factor(s: int) -> float:
        if warm > 0 and s < warm:
            return (s + 1) / warm
        return max(0.0, 1.0 - s / steps) ** power

    return factor


def _evaluate(model: nn.Module, config: TrainConfig) -> dict[str, Any] | None:
    if not config.eval_split:
        return None
    from runtime.evaluate import EvalConfig, evaluate
    from runtime.session import TorchSegmenter

    mcfg = getattr(model, "config", None)
    size = getattr(mcfg, "input_size", None) if getattr(mcfg, "family", None) == "swin" else None
    # a Swin backbone accepts only the size it was built for: images are resized to it (logits back to the image)
    seg = TorchSegmenter(model, input_size=(size, size) if size else None, name=config.model)
    cfg = EvalConfig(batch_size=config.batch_size, limit=config.eval_limit, num_overlays=0, progress=False)
    try:
        return evaluate(seg, config.data, config.eval_split, cfg)
    except DataError as exc:
        logger.warning("no evaluation: %s", exc)
        return None


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


def _process_group() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` process group (torchrun), else (0, 1)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def train(
    config: TrainConfig,
    model: nn.Module | None = None,
    loss_fn: LossFn | None = None,
    *,
    resume: Path | str | None = None,
    progress: str | None = None,
) -> TrainResult:
    """Train ``model`` (default: ``models.registry.build_model(config.model)``) for ``config.steps`` steps.

    ``resume`` (a checkpoint path) restores model, optimiser, scheduler, RNG states and the step, and continues
    to ``config.steps``. Deterministic on CPU for a given config: same seed, same weights. ``progress`` (a label,
    e.g. the model name) shows a tqdm bar on stderr (process 0 only); None shows none.
    """
    import torch

    if model is None:
        config = _resolve_model_overrides(config)  # recorded as run, e.g. a Swin's input size = the crop
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)  # restored afterwards: the setting is process-wide
    try:
        return _train(config, model, loss_fn, resume, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _progress_bar(label: str, total: int, initial: int) -> Any:
    """A tqdm bar over the steps: ``label  40%|####      | 100/250 [00:31<00:46, 3.2step/s, loss=0.812, lr=6.1e-04]``.

    Redrawn at most twice a second. It is drawn even when stderr is not a terminal (a pipe or a file), so that a
    caller that captures the output (``runtime.pipeline``) still shows how far the run is.
    """
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=label, unit="step", mininterval=0.5, dynamic_ncols=True, file=sys.stderr
    )


def _device(name: str) -> Any:
    """The torch device to train on: under torchrun, each process's own GPU; on a GPU, TF32 and cuDNN's autotuner."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:  # torchrun: one GPU each
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matrix products and convolutions: fp32 storage
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crops: cuDNN picks its fastest kernels once
    return device


def _resume(resume: Path, config: TrainConfig, model: Any, optimizer: Any, scheduler: Any, loss_fn: Any) -> int:
    """Load the checkpoint ``resume`` into the model, optimizer, scheduler, loss and random generators, after
    checking it is a training checkpoint of this model and configuration; returns its step."""
    from torch import nn

    ckpt = load_checkpoint(resume)
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "scheduler", "step", "config"} <= set(ckpt):
        raise InputError(f"{resume}: not a training checkpoint (model/optimizer/scheduler/step missing)")
    if ckpt["config"].get("model") != config.model:
        raise InputError(f"{resume}: checkpoint of model {ckpt['config'].get('model')!r}, not {config.model!r}")
    recorded, current = ckpt["config"].get("model_config"), _model_config(model)
    if recorded and current and recorded != current:
        diff = {k: (recorded.get(k), v) for k, v in current.items() if recorded.get(k) != v}
        raise InputError(f"{resume}: checkpoint of another {config.model} configuration (recorded, now): {diff}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if isinstance(loss_fn, nn.Module) and "loss" in ckpt:
            loss_fn.load_state_dict(ckpt["loss"])
    except (RuntimeError, KeyError, ValueError) as exc:  # another architecture's or a pruned model's state
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{resume}: the checkpoint does not fit this model ({first}); resume with the student it was made "
            "for, or start afresh in another --out."
        ) from exc
    _set_rng_state(ckpt["rng"])
    start = int(ckpt["step"])
    logger.info("resumed from %s at step %d", resume, start)
    return start


def _move(device: Any, *modules: Any) -> None:
    """Each of ``modules`` that is a torch module (a loss may be a plain function) to ``device``."""
    from torch import nn

    for m in modules:
        if isinstance(m, nn.Module):
            m.to(device)


def _step(net: Any, loss_fn: Any, batch: Batch, optimizer: Any, params: list[Any], grad_clip: float) -> tuple:
    """One optimisation step on ``batch``: ``(loss, its named parts)``; a loss that is not finite stops training."""
    import torch

    loss, parts = loss_fn(net(batch.images), batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss)} at step {batch.step}; lower --lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach()), parts


def _log_step(
    done: int, steps: int, loss: float, lr: float, since: float, count: int, parts: dict[str, Any]
) -> dict[str, Any]:
    """The history entry of the ``count`` steps up to ``done`` (mean loss, time per step since ``since``), logged."""
    entry = {"step": done, "loss": loss, "lr": lr, "s_per_step": (time.perf_counter() - since) / count, **parts}
    logger.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", done, steps, loss, lr, entry["s_per_step"])
    return entry


def _train(
    config: TrainConfig,
    model: nn.Module | None,
    loss_fn: LossFn | None,
    resume: Path | str | None,
    progress: str | None = None,
) -> TrainResult:
    import torch
    from torch import nn

    t_start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    # the data first: a missing or bad data set fails before a model is built
    dataset = LPCVDataset(config.data, config.train_split, augment_config=config.augment_config(), seed=config.seed)
    if model is None:
        from models.registry import build_model

        model = build_model(
            config.model,
            pretrained=config.pretrained,
            weights=config.weights,
            **(config.model_overrides or {}),
        )
    loss_fn = loss_fn if loss_fn is not None else CrossEntropyLoss(config.ignore_index)
    device = _device(config.device)
    _move(device, model, loss_fn)
    rank, world = _process_group()
    if config.batch_size % world:
        raise InputError(f"batch size {config.batch_size} is not a multiple of the {world} processes")
    params = list(model.parameters())
    if isinstance(loss_fn, nn.Module):
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(config))
    start = 0 if resume is None else _resume(Path(resume), config, model, optimizer, scheduler, loss_fn)
    if rank == 0:
        _write_json(asdict(config), out / "train_config.json")
    result = TrainResult(step=start, checkpoint=out / CHECKPOINT)
    if config.eval_at_start and start == 0 and rank == 0:
        result.metrics_at_start = _evaluate(model, config)

    def checkpoint(step: int) -> None:
        if rank != 0:  # one writer; every process holds the same weights
            return
        state: dict[str, Any] = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": _rng_state(),
            "config": {**asdict(config), "model_config": _model_config(model)},
        }
        if isinstance(loss_fn, nn.Module) and any(True for _ in loss_fn.state_dict()):
            state["loss"] = loss_fn.state_dict()
        save_checkpoint(result.checkpoint, state)

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=_StepBatches(start, config.steps, config.batch_size, len(dataset), config.seed, rank, world),
        num_workers=config.num_workers,
    )
    # several processes (torchrun): gradients averaged by DistributedDataParallel; checkpoints keep unwrapped names
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    model.train()
    bar = _progress_bar(progress, config.steps, start) if progress and rank == 0 and start < config.steps else None
    with contextlib.ExitStack() as stack:
        if bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            stack.callback(bar.close)
            stack.enter_context(logging_redirect_tqdm())  # the step log lines print above the bar, not into it
        t_log, running, count = time.perf_counter(), 0.0, 0
        step = start
        for step, (images, masks) in enumerate(loader, start=start):
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            keys = batch_keys(step, config.batch_size, len(dataset), config.seed)[rank::world]
            loss, parts = _step(net, loss_fn, Batch(images, masks, keys, step), optimizer, params, config.grad_clip)
            scheduler.step()
            running += loss
            count += 1
            done = step + 1
            if bar is not None:
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{running / count:.4f}", lr=f"{lr:.1e}", refresh=False)
                bar.update(1)
            if done % max(1, config.log_every) == 0 or done == config.steps:
                lr = optimizer.param_groups[0]["lr"]
                result.history.append(_log_step(done, config.steps, running / count, lr, t_log, count, parts))
                t_log, running, count = time.perf_counter(), 0.0, 0
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                checkpoint(done)
            step = done
    result.step = max(step, start)
    _move("cpu", model, loss_fn)  # the checkpoint, the evaluation and any export work on the CPU copy
    checkpoint(result.step)
    model.eval()
    if config.eval_split and rank == 0:
        logger.info("evaluating on the %s split of %s", config.eval_split, config.data)
    result.metrics = _evaluate(model, config) if rank == 0 else None
    result.seconds = time.perf_counter() - t_start
    summary = {
        "step": result.step,
        "seconds": result.seconds,
        "history": result.history,
        "metrics": result.metrics,
        "metrics_at_start": result.metrics_at_start,
    }
    if rank == 0:
        _write_json(summary, out / "metrics.json")
    return result


# -------------------------------------------------------------------------------------------------------- CLI


def add_loop_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    """The arguments of the training loop itself, shared by ``models.train`` and ``models.distill``; every number
    is checked when parsed (:mod:`fileformat.args`).

    ``d`` is the command's config dataclass (its defaults); the dest names match its field names except
    ``--workers`` (``num_workers``).
    """
    p.add_argument("--data", default=d.data, help="data root in the LPCV layout (python -m models.synthetic ROOT)")
    p.add_argument("--out", default=d.out, help="output folder (checkpoint.pt, metrics.json, ...)")
    p.add_argument(
        "--steps", type=positive_int, default=d.steps, help="optimiser steps in all (a resumed run continues to it)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help="global batch (split over processes; at most the training images)",
    )
    p.add_argument(
        "--crop", type=int_in(32, 4096, "pixels"), default=d.crop, help="square training crop in pixels (>= 32)"
    )
    p.add_argument("--lr", type=positive, default=d.lr, help="peak AdamW learning rate (poly decay to 0)")
    p.add_argument("--weight-decay", type=non_negative, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--warmup-steps",
        type=non_negative_int,
        default=d.warmup_steps,
        help="linear learning-rate warmup steps (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=d.checkpoint_every,
        help="steps between checkpoints (0: only at the end)",
    )
    p.add_argument("--log-every", type=positive_int, default=d.log_every, help="steps between loss log lines")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=d.seed,
        help="seed of the init, the sample order and augmentation (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=d.num_workers,
        help="data-loading processes, 0: in this one (default: %(default)s)",
    )
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads (none given: torch's choice)")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=d.device, help="where the steps run (checkpoints: always CPU)"
    )
    p.add_argument("--eval-split", default=d.eval_split, help="split scored at the end ('' for none)")
    p.add_argument(
        "--eval-limit", type=positive_int, help="score only the first N images of the eval split (none: all)"
    )
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT/checkpoint.pt (or the given file)")
    p.add_argument("--force", action="store_true", help="start afresh in an --out folder that holds another run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (step/total, loss, time left)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bar")


def check_loop_arguments(
    args: argparse.Namespace, run_files: Sequence[str] = (CHECKPOINT,), what: str = "training run"
) -> None:
    """Before torch is imported and before any work: the loop's folders, splits and batch, and whether ``--out``
    holds an earlier run (one of ``run_files`` there) that only ``--resume`` or ``--force`` may touch. Raises
    :class:`UsageError` (exit 2) or :class:`PassError` (the data cannot be used: exit 1)."""
    check_output_folder("--out", args.out, [("--data", args.data)])
    images = check_split(args.data, "train", "--data", "--data")
    if args.batch_size > images:
        raise UsageError(
            f"--batch-size {args.batch_size} is more than the {images} training images of {args.data}; give at most "
            f"{images} (every step would repeat images)."
        )
    if args.eval_split:
        check_split(args.data, args.eval_split, "--eval-split")
    found = [f for f in run_files if (Path(args.out) / f).exists()]
    if args.resume is None and not args.force and found:
        raise UsageError(
            f"--out {args.out} holds another {what} ({found[0]}); continue it with --resume, replace it with --force, "
            "or choose another --out."
        )
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        raise PassError(f"--resume {args.resume}: no such file.")


def loop_argument_error(args: argparse.Namespace) -> str | None:
    """The usage error in the shared loop arguments that parsing cannot see, if any (imports torch only to check
    ``--device cuda``)."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda: torch sees no CUDA device here; use --device cpu (the default)"
    return None


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--model", type=model_name, default=d.model, help="registered configuration (models.configs)")
    add_loop_arguments(p, d)
    p.add_argument(
        "--input-size",
        type=int,
        help="model input size (ModelConfig.input_size; Swin builds its backbone for it; none given: the "
        "configuration's, for Swin --crop)",
    )
    p.add_argument("--decoder-width", type=positive_int, help="UPerNet width (none given: the configuration's)")
    p.add_argument("--weights", help="initial weights file (safetensors / torch state dict / checkpoint)")
    p.add_argument("--pretrained", action="store_true", help="timm ImageNet backbone (needs the network)")
    p.add_argument("--eval-at-start", action="store_true", help="also score the untrained model")
    return p


@cli_main("python -m models.train")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 done, 1 data/model/checkpoint problem, 2 usage error. Every argument, folder, split and
    the batch against the data are checked before torch is imported (by :func:`train`): ``--help`` and usage
    errors answer at once."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.input_size is not None and (args.input_size < 32 or args.input_size % 32):
        raise UsageError(f"--input-size {args.input_size} is not a positive multiple of 32")
    base = CONFIGS[args.model]
    if base.family == "swin" and args.input_size not in (None, args.crop):
        raise UsageError(
            f"a Swin backbone only takes the size it is built for: --input-size {args.input_size} != --crop "
            f"{args.crop} (leave --input-size out to build it for the crop)"
        )
    if args.weights is not None and not Path(args.weights).is_file():
        raise PassError(f"--weights {args.weights}: no such file.")
    check_loop_arguments(args)
    if error := loop_argument_error(args):
        raise UsageError(error)
    overrides = {"input_size": args.input_size, "decoder_width": args.decoder_width}
    config = TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        model_overrides={k: v for k, v in overrides.items() if v is not None} or None,
        weights=args.weights,
        pretrained=args.pretrained,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        num_workers=args.workers,
        threads=args.threads,
        device=args.device,
        eval_split=args.eval_split or None,
        eval_limit=args.eval_limit,
        eval_at_start=args.eval_at_start,
    )
    resume = None
    if args.resume:
        resume = Path(args.out) / CHECKPOINT if args.resume == "auto" else Path(args.resume)
    res = train(config, resume=resume, progress=None if args.quiet or args.no_progress else f"train {config.model}")
    print(f"trained {config.model} for {res.step} steps in {res.seconds:.0f} s; checkpoint {res.checkpoint}")
    for label, m in (("before", res.metrics_at_start), ("after", res.metrics)):
        if m:
            tag = " (synthetic data)" if m["data"].get("synthetic") else ""
            print(
                f"{label}: {config.eval_split} mIoU {100 * (m['miou'] or 0):.2f} %, "
                f"mDice {100 * (m['mdice'] or 0):.2f} %, pixel accuracy {100 * (m['pixel_accuracy'] or 0):.2f} % "
                f"on {m['num_images']} images{tag}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
