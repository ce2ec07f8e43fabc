"""Teacher-guided distillation of a (pruned) student, through the one training loop of ``models.train``.

``python -m models.distill --student pruned.onnx --teacher runs/teacher/checkpoint.pt --data ROOT --steps 200
--out runs/distill/``

* Student: a pruned ONNX file (rebuilt in torch with its plan and weights, ``models.prune_torch.student_from_onnx``)
  or a registered configuration name (``--student-weights`` for its initial weights).
* Teacher: a checkpoint of ``models.train`` (its recorded configuration is rebuilt) or a plain state dict with
  ``--teacher-model NAME``; frozen, in eval mode. A checkpoint that does not fit is a clear error.
* Loss (``models.losses.DistillLoss``): ``--ce-weight`` x CE (``--ohem``) + ``--kd-weight`` x logit distillation
  (``--kd mse`` as the paper's code, or ``--kd kl --temperature T``) + ``--feat-weight`` x feature mimicking of the
  backbone stages ``--feat-stages`` (1x1 adapters trained with the student, checkpointed with it as the loss state,
  never exported).
* ``--cache-teacher`` (off by default): the teacher's decoder output (``[C, h/4, w/4]``, upsampled at use exactly as
  the model does) and the chosen stage features are stored per sample *and epoch* under
  ``OUT/teacher_cache/<key>/``; the key hashes the teacher file, the data files, the augmentation settings, the seed
  and the batch size. Every sample is augmented anew in each epoch, so one run never reads an entry twice: the first
  run only writes (all misses, ``C x crop/4 x crop/4`` floats per sample and step: about 60 KB at a 128 crop, 0.9 MB
  at 512). It pays only when a later run repeats the same schedule with the same teacher and data: a resumed run,
  another student (a sweep of compression ratios), other loss weights. A change of any keyed setting starts a new
  cache.
* Training, checkpoints (``OUT/checkpoint.pt`` every ``--checkpoint-every`` steps and at the end, atomic) and
  ``--resume`` come from :func:`models.train.train`: one loop, not two. ``OUT/distill_config.json`` records the
  distillation options; resuming with other options is refused.
* Several processes: ``torchrun --nproc_per_node N -m models.distill ...`` (gloo on CPU, nccl on GPUs): each
  process takes its share of every batch; the adapters' gradients are averaged across processes like the
  student's (DistributedDataParallel).
* At the end the student is exported to ``OUT/student.onnx`` with the source file's exporter, opset, attention form
  and target, its plan in the metadata (``vitseg.plan``), ready for the precision passes.
* Progress: a tqdm bar (step/total, loss, time left) on stderr unless ``--no-progress`` or ``-q``. torch is imported
  after the arguments are parsed: ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileformat.args import Parser, check_output_folder, fraction, int_in, non_negative, non_negative_int, positive
from fileformat.cli import cli_main
from fileformat.errors import InputError, PassError, UsageError
from models.configs import CONFIGS, model_name

if TYPE_CHECKING:
    import torch
    from torch import nn

    from models.losses import DistillLoss, LossConfig
    from models.registry import Segmentor

log = logging.getLogger(__name__)

__all__ = [
    "DistillConfig",
    "DistillError",
    "DistillObjective",  # noqa: F822 (an nn.Module built on first use: see _objective_class)
    "DistillResult",
    "TeacherOutputs",
    "distill",
    "freeze_batchnorm",
    "load_teacher",
    "main",
]

CONFIG_FILE = "distill_config.json"
STUDENT_ONNX = "student.onnx"
# options that must not change between a run and its resumption
_RESUME_KEYS = (
    "student",
    "teacher",
    "teacher_model",
    "data",
    "batch_size",
    "crop",
    "lr",
    "weight_decay",
    "seed",
    "loss",
    "freeze_bn",
    "steps",
)


# The command line's loss options and defaults: models.losses.LossConfig's, repeated here so that `--help` does not
# import torch (tests/models/test_distill.py holds them equal).
KD_KINDS = ("mse", "kl")
LOSS_DEFAULTS: dict[str, Any] = {
    "ce_weight": 1.0,
    "ohem_thresh": 0.7,
    "ohem_min_kept": 100_000,
    "kd": "mse",
    "kd_weight": 1.0,
    "temperature": 1.0,
    "feat_weight": 0.0,
    "feat_stages": (0, 1),
}


class DistillError(InputError):
    """A distillation that cannot run as asked (bad student, teacher, checkpoint or options); says why."""


def _default_loss() -> LossConfig:
    from models.losses import LossConfig

    return LossConfig()


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (written to ``OUT/distill_config.json``)."""

    student: str
    teacher: str
    data: str = "data/synthetic"
    out: str = "runs/distill"
    teacher_model: str | None = None
    student_weights: str | None = None
    steps: int = 200
    batch_size: int = 4
    crop: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    device: str = "cpu"
    loss: LossConfig = field(default_factory=_default_loss)  # the terms and their weights
    cache_teacher: bool = False
    cache_dir: str | None = None
    freeze_bn: bool | None = None  # None: on for an ONNX student (its BN is folded), off for a configuration
    eval_split: str | None = "val"
    eval_limit: int | None = None
    export: bool = True
    export_opset: int = 17
    export_exporter: str = "legacy"
    export_size: int | None = None
    export_tolerance: float = 1e-4

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss"]["feat_stages"] = list(self.loss.feat_stages)
        return d


@dataclass
class DistillResult:
    """What a run did: the training result, the exported student (if any) and the teacher-cache statistics."""

    step: int
    checkpoint: Path
    onnx: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------- distributed


def _dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (0, 1 without it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int]:
    """Join torchrun's process group when started by torchrun (gloo on CPU, nccl on CUDA); return (rank, world)."""
    import torch

    rank, world = _dist_env()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        log.info("process %d of %d (%s)", rank, world, backend)
    return rank, world


# ------------------------------------------------------------------------------------------------- models


def load_teacher(path: str | Path, model_name: str | None = None) -> Segmentor:
    """The frozen teacher of a checkpoint (eval mode, no gradients).

    The architecture comes from the checkpoint's recorded configuration (``models.train`` writes it) or from
    ``model_name``; both given and different, or weights that do not fit, raise :class:`DistillError`.
    """
    from models.registry import ModelConfig, Segmentor, UnknownModelError, get_config
    from models.weights import WeightsError, load_into, read_state_dict, torch_load

    p = Path(path)
    try:
        state = read_state_dict(p)
    except WeightsError as exc:
        raise DistillError(f"teacher: {exc}") from exc
    recorded: dict[str, Any] = {}
    if p.suffix != ".safetensors":
        raw = torch_load(p)
        if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
            recorded = raw["config"]
    try:
        if isinstance(recorded.get("model_config"), dict):
            config = ModelConfig.from_dict(recorded["model_config"])
        elif recorded.get("model"):
            config = get_config(str(recorded["model"]), **(recorded.get("model_overrides") or {}))
        elif model_name:
            config = get_config(model_name)
        else:
            raise DistillError(
                f"teacher: {p} records no model configuration; say which registered model it is (--teacher-model)."
            )
    except UnknownModelError as exc:
        raise DistillError(f"teacher: {exc}") from exc
    if model_name and model_name != config.name:
        raise DistillError(f"teacher: {p} is a checkpoint of {config.name!r}, not of {model_name!r}.")
    model = Segmentor(config)
    try:
        load_into(model, state, f"teacher checkpoint {p}")
    except WeightsError as exc:
        raise DistillError(f"{exc} (is it a checkpoint for another architecture than {config.name}?)") from exc
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` replacement of a frozen BatchNorm: it stays in eval mode (running statistics used, not updated)."""
    return self


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm of ``model`` in eval mode for good (its affine parameters still train); return count."""
    from torch import nn

    n = 0
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
            mod.train = types.MethodType(_frozen_train, mod)  # model.train() reaches it through children()
            n += 1
    return n


def _load_student(cfg: DistillConfig) -> tuple[Segmentor, dict[str, Any] | None, dict[str, Any]]:
    """(student, plan or None, export options dict) from an ONNX file or a configuration name."""
    import torch

    from models.onnx_weights import student_from_onnx
    from models.registry import UnknownModelError, build_model
    from models.torch_plan import PlanError
    from models.weights import WeightsError

    src = Path(cfg.student)
    if src.suffix == ".onnx" or src.is_file():
        try:
            model, plan, meta = student_from_onnx(src)
        except PlanError as exc:
            raise DistillError(f"student: {exc}") from exc
        export = {
            "exporter": meta.get("exporter", cfg.export_exporter),
            "opset": int(meta.get("opset", cfg.export_opset)),
            "fused_attn": meta.get("fused_attn"),
            "target": meta.get("target"),
            "input_size": int((meta.get("input_size") or [cfg.export_size or cfg.crop])[0]),
        }
        history = list(meta.get("history") or [])
        return model, plan, {"options": export, "history": history}
    torch.manual_seed(cfg.seed)  # the random init (without --student-weights) is part of the run's definition
    try:
        model = build_model(cfg.student, weights=cfg.student_weights)
    except (UnknownModelError, WeightsError) as exc:
        raise DistillError(f"student: {exc}") from exc
    export = {
        "exporter": cfg.export_exporter,
        "opset": cfg.export_opset,
        "fused_attn": None,
        "target": None,
        "input_size": cfg.export_size or cfg.crop,
    }
    return model, None, {"options": export, "history": []}


# ------------------------------------------------------------------------------------------ teacher outputs


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(cfg: DistillConfig, sample_paths: Sequence[Path], stages: Sequence[int]) -> str:
    """Hash of what the teacher's outputs depend on: teacher weights, data files, augmentation, seed, stages."""
    from models.train import TrainConfig

    files = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in sample_paths]
    aug = asdict(TrainConfig(crop=cfg.crop).augment_config())
    payload = {
        "teacher": _file_digest(Path(cfg.teacher)),
        "files": files,
        "augment": aug,
        "seed": cfg.seed,
        "stages": sorted(int(s) for s in stages),
        "batch_size": cfg.batch_size,  # batched kernels round differently: keep cached == computed exactly
        "version": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


class TeacherOutputs:
    """The frozen teacher's logits (and stage features) for a batch, from a per-sample disk cache when enabled.

    Not an ``nn.Module`` on purpose: the teacher is neither optimised nor checkpointed with the student.
    The logits are ``interpolate(decoder(backbone(x)), size(x))``, the same op the model applies, so cached and
    computed values are identical.
    """

    def __init__(self, teacher: Segmentor, stages: Sequence[int], cache_dir: Path | None = None) -> None:
        self.teacher = teacher
        self.stages = [int(s) for s in stages]
        self.cache_dir = cache_dir
        self.hits = 0
        self.misses = 0
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: tuple[int, int]) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"e{key[1]}_i{key[0]}.pt"

    def _compute(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        import torch

        with torch.no_grad():
            feats = self.teacher.backbone(images)
            dec = self.teacher.decoder(feats)  # [N, C, H/4, W/4]
        return dec, {s: feats[s] for s in self.stages}

    def __call__(self, images: torch.Tensor, keys: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[Any]]:
        """``(logits [N, C, H, W], stage features list with maps at the chosen stages, None elsewhere)``."""
        import torch
        import torch.nn.functional as F

        dec: torch.Tensor | None = None
        feats: dict[int, torch.Tensor] = {}
        if self.cache_dir is not None and keys and all(self._path(k).is_file() for k in keys):
            try:
                items = [torch.load(self._path(k), map_location=images.device, weights_only=True) for k in keys]
                dec = torch.stack([it["dec"] for it in items])
                feats = {s: torch.stack([it["feats"][s] for it in items]) for s in self.stages}
                self.hits += len(keys)
            except Exception as exc:  # a damaged cache entry: recompute (and rewrite) it
                log.warning("teacher cache unreadable (%s); recomputing", exc)
                dec = None
        if dec is None:
            dec, feats = self._compute(images)
            self.misses += len(keys)
            if self.cache_dir is not None:
                from models.train import save_checkpoint

                for i, k in enumerate(keys):
                    item = {"dec": dec[i].clone(), "feats": {s: feats[s][i].clone() for s in self.stages}}
                    save_checkpoint(self._path(k), item)  # atomic write (temp file + os.replace)
        logits = F.interpolate(dec, size=images.shape[-2:], mode="bilinear", align_corners=False)
        levels = max(self.stages) + 1 if self.stages else 0
        return logits, [feats.get(i) for i in range(levels)]


class _FeatureTap:
    """Forward hook keeping the last output of the student's backbone (its stage features)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.feats: list[torch.Tensor] | None = None
        self.handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.feats = list(output)

    def pop(self) -> list[torch.Tensor] | None:
        out, self.feats = self.feats, None
        return out


def _objective_class() -> type:
    """:class:`DistillObjective`, defined on first use: it is an ``nn.Module``, and this module is imported without
    torch (``--help``). ``from models.distill import DistillObjective`` reaches it through the module's
    ``__getattr__``; the class is built once and kept in the module's namespace."""
    cls = globals().get("DistillObjective")
    if cls is None:
        from torch import nn

        class DistillObjective(nn.Module):
            """The ``loss_fn`` given to :func:`models.train.train`: ``(student logits, batch) -> (loss, terms)``.

            Holds the :class:`DistillLoss` (its adapters are this module's only parameters, so the loop optimises and
            checkpoints them); the teacher is reached through :class:`TeacherOutputs`, outside the module tree.
            """

            def __init__(self, loss: DistillLoss, teacher: TeacherOutputs | None, student: Segmentor) -> None:
                super().__init__()
                self.loss = loss
                self._teacher = teacher
                self._tap = _FeatureTap(student.backbone) if loss.config.feat_weight > 0 else None

            def forward(self, outputs: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
                t_logits, t_feats, s_feats = None, None, None
                if self.loss.needs_teacher:
                    assert self._teacher is not None
                    t_logits, t_feats = self._teacher(batch.images, batch.keys)
                if self._tap is not None:
                    s_feats = self._tap.pop()
                return self.loss(outputs, batch.masks, t_logits, s_feats, t_feats)

            def close(self) -> None:
                """Remove the feature hook from the student (before it is exported or reused)."""
                if self._tap is not None:
                    self._tap.handle.remove()
                    self._tap = None

        DistillObjective.__qualname__ = "DistillObjective"
        globals()["DistillObjective"] = cls = DistillObjective
    return cls


def __getattr__(name: str) -> Any:
    if name == "DistillObjective":
        return _objective_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _average_grads_across_processes(module: nn.Module, world: int) -> None:
    """Make ``module``'s gradients the mean over processes (what DDP does for the student's)."""

    import torch

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad / world

    for p in module.parameters():
        if p.requires_grad:
            p.register_hook(hook)


# ---------------------------------------------------------------------------------------------------- run


def _check_resume(cfg: DistillConfig, out: Path, resume: Path) -> None:
    from models.train import load_checkpoint

    try:
        ckpt = load_checkpoint(resume)
    except FileNotFoundError as exc:
        raise DistillError(f"--resume: {exc}") from exc
    except Exception as exc:
        raise DistillError(
            f"--resume: {resume} is not a readable checkpoint ({type(exc).__name__}: {exc}); delete it to start afresh."
        ) from exc
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step"} <= set(ckpt):
        raise DistillError(f"--resume: {resume} is not a training checkpoint (model/optimizer/step missing).")
    recorded = out / CONFIG_FILE
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        new = cfg.to_dict()
        diff = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
        if diff:
            raise DistillError(
                f"--resume: the run in {out} used other options ({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); "
                "resume with the same options or use another --out."
            )


def _check_teacher(teacher: Any, student: Any, crop: int) -> None:
    """The teacher predicts the student's classes, and a Swin teacher was built for the crop it will see."""
    if teacher.config.num_classes != student.config.num_classes:
        raise DistillError(
            f"teacher predicts {teacher.config.num_classes} classes, the student {student.config.num_classes}."
        )
    if teacher.config.family == "swin" and teacher.config.input_size != crop:
        raise DistillError(
            f"the Swin teacher was built for {teacher.config.input_size}x{teacher.config.input_size} inputs; "
            f"distil with --crop {teacher.config.input_size} (or train the teacher at --crop {crop})."
        )


def _teacher_cache(cfg: DistillConfig, out: Path, num_classes: int, key: str) -> Path:
    """The folder of this run's cached teacher outputs (its size logged)."""
    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else out / "teacher_cache") / key
    entries = cfg.steps * cfg.batch_size  # one per sample and epoch: no entry is read twice in one run
    mb = entries * num_classes * (cfg.crop // 4) ** 2 * 4 / 1e6
    log.info(
        "teacher cache %s: up to %d entries (%.0f MB of logits, more with features); reused only by a later run "
        "with the same teacher, data, seed and batch size",
        cache_dir,
        entries,
        mb,
    )
    return cache_dir


def _train_config(cfg: DistillConfig, model: str, out: Path, rank: int) -> Any:
    """The training loop's configuration for this distillation (the evaluation on the first process only)."""
    from models.train import TrainConfig

    return TrainConfig(
        model=model,
        data=cfg.data,
        out=str(out),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        crop=cfg.crop,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        threads=cfg.threads,
        device=cfg.device,
        eval_split=cfg.eval_split if rank == 0 else None,
        eval_limit=cfg.eval_limit,
    )


def _log_cache_use(teacher_outputs: Any, cache_dir: Path) -> None:
    """Say that a teacher cache that only missed pays only when a later run repeats the schedule."""
    if teacher_outputs.misses and not teacher_outputs.hits:
        log.info(
            "teacher cache: %d misses and no hits, as expected for a first run (each sample is augmented anew every "
            "epoch); it pays only when a later run repeats this schedule. Delete %s when done.",
            teacher_outputs.misses,
            cache_dir,
        )


def distill(cfg: DistillConfig, *, resume: str | Path | None = None, progress: str | None = None) -> DistillResult:
    """Distil ``cfg.teacher`` into ``cfg.student`` for ``cfg.steps`` steps; see the module docstring.

    Everything is validated (student, plan, teacher, data, resume checkpoint) before anything is written.
    ``progress`` (a label) shows a tqdm bar over the steps on stderr (:func:`models.train.train`).
    """
    import torch

    from models.data import DataError, find_samples
    from models.losses import DistillLoss
    from models.train import train

    t0 = time.perf_counter()
    loss_config = cfg.loss
    out = Path(cfg.out)
    resume_path = None if resume is None else Path(resume)
    if resume_path is not None:
        _check_resume(cfg, out, resume_path)

    student, plan, export_info = _load_student(cfg)
    teacher = load_teacher(cfg.teacher, cfg.teacher_model) if loss_config.kd_weight or loss_config.feat_weight else None
    if teacher is not None:
        _check_teacher(teacher, student, cfg.crop)
    try:
        samples = find_samples(cfg.data, "train")
        sample_paths = [p for s in samples for p in (s.image_path, s.mask_path) if p is not None]
    except DataError as exc:
        raise DistillError(f"data: {exc}") from exc
    frozen = cfg.freeze_bn if cfg.freeze_bn is not None else plan is not None
    torch.manual_seed(cfg.seed)  # the adapters' init is part of the run's definition
    loss = DistillLoss(
        loss_config,
        student_channels=student.backbone.channels,
        teacher_channels=teacher.backbone.channels if teacher is not None else None,
    )

    rank, world = init_distributed()
    if cfg.batch_size % world:
        raise DistillError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes.")
    feat_stages = loss_config.feat_stages if loss_config.feat_weight else ()
    cache_dir = None
    if cfg.cache_teacher and teacher is not None:
        cache_dir = _teacher_cache(cfg, out, teacher.config.num_classes, cache_key(cfg, sample_paths, feat_stages))
    if teacher is not None:
        teacher.to(cfg.device)  # outside the student's module tree: moved here, not by the training loop
    teacher_outputs = TeacherOutputs(teacher, feat_stages, cache_dir) if teacher else None
    if frozen:
        log.info("BatchNorm frozen in %d layers", freeze_batchnorm(student))
    objective = _objective_class()(loss, teacher_outputs, student)
    if world > 1:
        _average_grads_across_processes(objective, world)

    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        from fileformat.io import atomic_write_text

        atomic_write_text(out / CONFIG_FILE, json.dumps({**cfg.to_dict(), "bn_frozen": frozen}, indent=1) + "\n")
    tcfg = _train_config(cfg, student.config.name, out, rank)
    try:
        result = train(tcfg, student, loss_fn=objective, resume=resume_path, progress=progress)
    except ValueError as exc:  # a resume checkpoint of another student, a batch that does not split, ...
        if isinstance(exc, DistillError):
            raise
        raise DistillError(str(exc)) from exc
    finally:
        objective.close()
    onnx_path = None
    if cfg.export and rank == 0:
        onnx_path = _export(student, plan, export_info, cfg, out, result.step)
    if world > 1:
        torch.distributed.barrier()
    if teacher_outputs is not None and cache_dir is not None:
        _log_cache_use(teacher_outputs, cache_dir)
    return DistillResult(
        step=result.step,
        checkpoint=result.checkpoint,
        onnx=onnx_path,
        history=result.history,
        metrics=result.metrics,
        cache_hits=teacher_outputs.hits if teacher_outputs else 0,
        cache_misses=teacher_outputs.misses if teacher_outputs else 0,
        seconds=time.perf_counter() - t0,
    )


def _export(
    student: Segmentor, plan: dict[str, Any] | None, info: dict[str, Any], cfg: DistillConfig, out: Path, step: int
) -> Path:
    """Export the distilled student with the source's target options, plan and history preserved."""
    from exporters.export import ExportError, ExportOptions, export_torch_model

    o = info["options"]
    opts = ExportOptions(
        model=student.config.name,
        input_size=int(o["input_size"]),
        opset=int(o["opset"]),
        exporter=str(o["exporter"]),
        fused_attn=o["fused_attn"],
        target=o["target"],
        seed=cfg.seed,
        tolerance=cfg.export_tolerance,
    )
    entry = {
        "pass": "distill",
        "teacher": str(cfg.teacher),
        "steps": step,
        "kd": cfg.loss.kd if cfg.loss.kd_weight else None,
        "kd_weight": cfg.loss.kd_weight,
        "feat_weight": cfg.loss.feat_weight,
        "ce_weight": cfg.loss.ce_weight,
    }
    extra: dict[str, Any] = {"history": [*info["history"], entry]}
    if plan is not None:
        extra["plan"] = plan
    path = out / STUDENT_ONNX
    student.eval()
    try:
        export_torch_model(student, path, opts, extra_metadata=extra)
    except ExportError as exc:
        raise DistillError(f"re-export of the distilled student failed: {exc}") from exc
    log.info("exported %s", path)
    return path


# ---------------------------------------------------------------------------------------------------- CLI


STAGES = 4  # every backbone gives feature maps at strides 4, 8, 16 and 32 (models.backbones)
EXPORTERS = ("legacy", "dynamo")  # exporters.export's, repeated so that --help does not import onnx
OPSETS = (13, 18)  # exporters.export.SUPPORTED_OPSETS, as a range


def _stages(text: str) -> tuple[int, ...]:
    """``--feat-stages``: distinct backbone stage indices in ``0..STAGES-1``, comma-separated."""
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated stage indices, got {text!r}") from None
    bad = [s for s in stages if not 0 <= s < STAGES]
    if bad:
        raise argparse.ArgumentTypeError(f"stage {bad[0]} does not exist; the backbone has stages 0 to {STAGES - 1}")
    if len(set(stages)) != len(stages):
        raise argparse.ArgumentTypeError(f"{text!r} names a stage twice")
    return stages


def _parser() -> argparse.ArgumentParser:
    from models.train import add_loop_arguments

    # the dataclass's defaults without building one (its loss default would import torch)
    d = types.SimpleNamespace(**{f.name: f.default for f in fields(DistillConfig) if f.default is not MISSING})
    loss = types.SimpleNamespace(**LOSS_DEFAULTS)
    p = Parser(prog="python -m models.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--student", required=True, help="pruned .onnx file, or a registered configuration name")
    p.add_argument("--student-weights", help="initial weights of a configuration-name student")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (models.train) or state dict")
    p.add_argument(
        "--teacher-model", type=model_name, help="the teacher's registered configuration when its file records none"
    )
    add_loop_arguments(p, d)
    p.add_argument("--ce-weight", type=non_negative, default=loss.ce_weight, help="weight of the cross-entropy term")
    p.add_argument("--ohem", action="store_true", help="online hard example mining for the CE term (mmseg's)")
    p.add_argument("--ohem-thresh", type=fraction, default=loss.ohem_thresh, help="OHEM probability threshold")
    p.add_argument(
        "--ohem-min-kept", type=non_negative_int, default=loss.ohem_min_kept, help="OHEM: pixels kept at least"
    )
    p.add_argument("--kd", choices=KD_KINDS, default=loss.kd, help="logit distillation: mse (paper) or kl")
    p.add_argument("--kd-weight", type=non_negative, default=loss.kd_weight, help="weight of the logit term (0: off)")
    p.add_argument("--temperature", type=positive, default=loss.temperature, help="KL temperature (T^2-scaled)")
    p.add_argument(
        "--feat-weight",
        type=non_negative,
        default=loss.feat_weight,
        help="feature mimicking weight, 0: off (default: %(default)s)",
    )
    p.add_argument(
        "--feat-stages",
        type=_stages,
        default=loss.feat_stages,
        help=f"backbone stages mimicked, 0 to {STAGES - 1}, e.g. 0,1",
    )
    p.add_argument(
        "--cache-teacher",
        action="store_true",
        help="store the teacher's outputs per sample and epoch on disk; one run never reads them back (each epoch "
        "augments anew): pays only for a later run of the same schedule (resume, another student)",
    )
    p.add_argument("--cache-dir", help="teacher cache folder (none given: OUT/teacher_cache)")
    p.add_argument(
        "--freeze-bn",
        dest="freeze_bn",
        action="store_true",
        default=None,
        help="keep BatchNorm statistics fixed (none given: frozen for an .onnx student, trained for a name)",
    )
    # SUPPRESS: the help would show the store_false action's own default (True), not --freeze-bn's None
    p.add_argument(
        "--no-freeze-bn", dest="freeze_bn", action="store_false", default=argparse.SUPPRESS, help="train BatchNorm"
    )
    p.add_argument("--no-export", action="store_true", help="skip the ONNX re-export")
    p.add_argument(
        "--opset", type=int_in(*OPSETS), default=d.export_opset, help="export opset of a configuration student"
    )
    p.add_argument(
        "--exporter", choices=EXPORTERS, default=d.export_exporter, help="exporter of a configuration student"
    )
    p.add_argument(
        "--export-size",
        type=int_in(32, 4096, "pixels"),
        help="export input size of a configuration student (none: --crop)",
    )
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Before torch is imported: the student and teacher exist, the folders, splits and batch fit, and ``--out``
    holds no earlier run unless ``--resume`` or ``--force`` (raises :class:`UsageError` or :class:`PassError`)."""
    from models.train import CHECKPOINT, check_loop_arguments

    src = Path(args.student)
    if src.suffix == ".onnx" or src.exists():
        if not src.is_file():
            raise PassError(f"--student {src}: no such file.")
    elif args.student not in CONFIGS:
        raise UsageError(
            f"--student {args.student!r}: neither a file nor a registered configuration ({', '.join(CONFIGS)})"
        )
    for option, path in (("--teacher", args.teacher), ("--student-weights", args.student_weights)):
        if path is not None and not Path(path).is_file():
            raise PassError(f"{option} {path}: no such file.")
    if args.feat_weight > 0 and not args.feat_stages:
        raise UsageError("--feat-weight > 0 needs at least one stage in --feat-stages")
    check_loop_arguments(args, (CHECKPOINT, STUDENT_ONNX, CONFIG_FILE), "distillation run")
    if args.cache_dir:
        check_output_folder("--cache-dir", args.cache_dir, [("--data", args.data)])


@cli_main("python -m models.distill")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 done, 1 bad student/teacher/data/checkpoint, 2 usage error. Every argument is checked before torch is
    imported."""
    from models.train import loop_argument_error

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    check_arguments(args)
    if error := loop_argument_error(args):
        raise UsageError(error)
    from models.losses import LossConfig  # torch: after the arguments are checked

    try:
        loss = LossConfig(
            ce_weight=args.ce_weight,
            ohem=args.ohem,
            ohem_thresh=args.ohem_thresh,
            ohem_min_kept=args.ohem_min_kept,
            kd=args.kd,
            kd_weight=args.kd_weight,
            temperature=args.temperature,
            feat_weight=args.feat_weight,
            feat_stages=args.feat_stages,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = DistillConfig(
        student=args.student,
        teacher=args.teacher,
        data=args.data,
        out=args.out,
        teacher_model=args.teacher_model,
        student_weights=args.student_weights,
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
        loss=loss,
        cache_teacher=args.cache_teacher,
        cache_dir=args.cache_dir,
        freeze_bn=args.freeze_bn,
        eval_split=args.eval_split or None,
        eval_limit=args.eval_limit,
        export=not args.no_export,
        export_opset=args.opset,
        export_exporter=args.exporter,
        export_size=args.export_size,
    )
    resume = None
    if args.resume:
        resume = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    try:
        res = distill(cfg, resume=resume, progress=None if args.quiet or args.no_progress else "distill")
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if _dist_env()[0] != 0:
        return 0
    last = res.history[-1] if res.history else {}
    terms = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k in ("ce", "kd", "feat"))
    print(
        f"distilled {cfg.student} for {res.step} steps in {res.seconds:.0f} s (last: loss {last.get('loss', 0):.4f}"
        f"{', ' + terms if terms else ''}); "
        + (f"teacher cache {res.cache_hits} hits / {res.cache_misses} misses; " if cfg.cache_teacher else "")
        + f"checkpoint {res.checkpoint}"
        + (f"; exported {res.onnx}" if res.onnx else "")
    )
    m = res.metrics
    if m:
        tag = " (synthetic data)" if m.get("data", {}).get("synthetic") else ""
        print(
            f"{cfg.eval_split}: mIoU {100 * (m['miou'] or 0):.2f} %, mDice {100 * (m['mdice'] or 0):.2f} % "
            f"on {m['num_images']} images{tag}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
