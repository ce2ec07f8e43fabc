"""Export a registered model to a checked, self-describing ONNX file.

``python -m exporters.export --model paper --input-size 512 --opset 17 -o student.onnx``

Exporter choice (measured on this machine, MobileViT-XXS + UPerNet-128 at 64x64, torch 2.14): the legacy
TorchScript exporter takes 0.7 s and emits exactly the requested opset; the dynamo exporter takes 6-7 s, always
builds opset 18 (down-converted here with onnx's version converter, LayerNormalization decomposed for opset < 17),
keeps BatchNorm unfolded and moves module paths into node metadata. The legacy exporter is the default; both are
supported and checked the same way.

torch (and the model registry, which imports timm) is imported when an export runs, not with this module:
``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fileformat.args import (
    Parser,
    check_not_replacing,
    int_in,
    non_negative,
    non_negative_int,
    positive_int,
    target_name,
)
from fileformat.cli import cli_main
from fileformat.errors import PassError, UsageError
from fileformat.io import check_distinct, check_output_path
from fileformat.metadata import write_metadata
from fileformat.targets import TARGETS, get_target
from models.configs import model_name
from models.constants import CLASS_NAMES, MEAN, STD

if TYPE_CHECKING:  # onnx, torch and the opset converter load when an export runs, not for --help
    import onnx
    import torch
    from torch import nn

    from models.registry import ModelConfig, Segmentor

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = (13, 14, 15, 16, 17, 18)
EXPORTERS = ("legacy", "dynamo")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(PassError):
    """The export cannot be done as asked; the message says why and what to do."""


class ExportUsageError(ExportError, UsageError):
    """An option out of its range (opset, exporter, input size): a usage error, exit status 2."""


@dataclass
class ExportOptions:
    """What to export and how. ``fused_attn=None`` keeps timm's fused attention unless the opset or target forbids."""

    model: str = "mobilevit_xxs"
    input_size: int = 512
    opset: int = 17
    exporter: str = "legacy"
    dynamic_batch: bool = False
    target: str | None = None
    fused_attn: bool | None = None
    weights: str | None = None
    pretrained: bool = False
    decoder_width: int | None = None
    seed: int = 0
    tolerance: float = 1e-4


@dataclass
class ExportResult:
    path: Path
    params: int
    flops: int
    max_abs_error: float
    seconds: float
    options: dict[str, Any]


def _validate(opts: ExportOptions) -> ExportOptions:
    if opts.target is not None:
        profile = get_target(opts.target)
        if opts.opset > profile.max_opset:
            log.info("target %s: opset %d -> %d", opts.target, opts.opset, profile.export_opset)
            opts.opset = profile.export_opset
        if not profile.fused_attention:
            opts.fused_attn = False
    if opts.opset not in SUPPORTED_OPSETS:
        raise ExportUsageError(
            f"opset {opts.opset} is not supported; use one of {SUPPORTED_OPSETS} (13 for TensorRT 8.2)."
        )
    if opts.exporter not in EXPORTERS:
        raise ExportUsageError(f"unknown exporter {opts.exporter!r}; use 'legacy' or 'dynamo'.")
    if opts.input_size % 32 or opts.input_size < 32:
        raise ExportUsageError(
            f"input size {opts.input_size} must be a positive multiple of 32 (the backbone's stride)."
        )
    return opts


def set_fused_attention(model: nn.Module, enabled: bool) -> None:
    """Switch timm's fused attention (``F.scaled_dot_product_attention``) on or off in every module that has it."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled


def torch_to_onnx(
    model: nn.Module, example: torch.Tensor, *, exporter: str, opset: int, dynamic_batch: bool = False
) -> onnx.ModelProto:
    """Run one torch exporter and return the ModelProto in memory (weights inside, at the requested opset)."""
    import onnx
    import torch

    from exporters.opset import to_opset

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on constant shapes are expected: sizes are fixed
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            )
            return onnx.load_from_string(buf.getvalue())
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=max(opset, 18),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
        proto = program.model_proto
    if opset >= 18:
        return proto
    try:
        return to_opset(proto, opset)
    except Exception as exc:  # the graph traced; only its down-conversion failed, which no option above changes
        raise ExportError(
            f"the dynamo exporter builds opset 18, and onnx's version converter cannot take this graph down to opset "
            f"{opset} ({type(exc).__name__}: {exc}). Export with --exporter legacy, which writes opset {opset} "
            "directly, or at --opset 18 where the target allows it."
        ) from exc


def onnx_vs_torch(proto: onnx.ModelProto, model: nn.Module, example: torch.Tensor) -> float:
    """Max abs difference between onnxruntime (CPU) and torch on ``example``."""
    import torch

    from fileformat.session import SessionConfig, load_session

    sess = load_session(proto, SessionConfig(spinning=True))
    got = sess.run(None, {sess.get_inputs()[0].name: example.numpy()})[0]
    with torch.no_grad():
        ref = model(example).numpy()
    if got.shape != ref.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} differs from torch's {ref.shape}.")
    return float(np.abs(got - ref).max())


def export_torch_model(
    model: Segmentor, output: str | Path, opts: ExportOptions, *, extra_metadata: dict[str, Any] | None = None
) -> ExportResult:
    """Export an already-built model (e.g. a pruned, distilled student) with the same checks and metadata."""
    import onnx
    import torch

    from exporters.weight_map import build_weight_map
    from models.registry import model_size

    start = time.perf_counter()
    out = Path(output)
    if not out.parent.is_dir():
        raise ExportError(f"output directory {out.parent} does not exist; create it first.")
    opts = _validate(opts)
    fused = opts.fused_attn if opts.fused_attn is not None else opts.opset >= 14
    set_fused_attention(model, fused)
    model.eval()
    gen = torch.Generator().manual_seed(opts.seed)
    example = torch.randn(1, 3, opts.input_size, opts.input_size, generator=gen)
    try:
        proto = torch_to_onnx(
            model, example, exporter=opts.exporter, opset=opts.opset, dynamic_batch=opts.dynamic_batch
        )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"the {opts.exporter} exporter failed at opset {opts.opset} ({type(exc).__name__}: {exc}). "
            + ("Try --no-fused-attn or the other exporter." if fused else "Try the other exporter (--exporter).")
        ) from exc
    config: ModelConfig = model.config
    meta = {
        "classes": list(CLASS_NAMES[: config.num_classes])
        if config.num_classes <= len(CLASS_NAMES)
        else [f"class_{i}" for i in range(config.num_classes)],
        "input_size": [opts.input_size, opts.input_size],
        "mean": list(MEAN),
        "std": list(STD),
        "config": config.to_dict(),
        "exporter": opts.exporter,
        "opset": opts.opset,
        "target": opts.target,
        "fused_attn": fused,
        "weight_map": build_weight_map(proto, model),
    }
    meta.update(extra_metadata or {})
    write_metadata(proto, meta)
    proto.producer_name = "vitseg-compress"
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails the ONNX checks: {exc}") from exc
    err = onnx_vs_torch(proto, model, example)
    if not err <= opts.tolerance:
        raise ExportError(
            f"onnxruntime differs from torch by {err:.3g} (max abs), over the tolerance {opts.tolerance:g}; "
            "nothing was written. Try the other exporter, or report the model configuration."
        )
    from fileformat.io import save_model

    save_model(proto, out)
    size = model_size(model, opts.input_size, config.name)
    return ExportResult(out, size.params, size.flops, err, time.perf_counter() - start, asdict(opts))


def _checkpoint_config(weights: str | None) -> dict[str, Any] | None:
    """The ``ModelConfig`` a training checkpoint (``models.train``) recorded, if the file is one."""
    if weights is None or Path(weights).suffix == ".safetensors" or not Path(weights).is_file():
        return None
    import torch

    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # read_state_dict reports unreadable files with the full message
        return None
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return cfg.get("model_config") if isinstance(cfg, dict) else None


def export(opts: ExportOptions, output: str | Path) -> ExportResult:
    """Build ``opts.model`` (random init, ``--pretrained`` or ``--weights``) and export it to ``output``.

    A training checkpoint's recorded configuration (decoder width, Swin input size) is used for the build, so the
    flags it was trained with need not be repeated; a checkpoint of another model is refused.
    """
    import torch

    from models.registry import ModelConfig, build_model, get_config

    opts = _validate(opts)
    torch.manual_seed(opts.seed)
    overrides: dict[str, Any] = {"decoder_width": opts.decoder_width}
    recorded = _checkpoint_config(opts.weights)
    if recorded is not None:
        if recorded.get("name") != opts.model:
            raise ExportError(
                f"{opts.weights} holds a {recorded.get('name')!r} model, not {opts.model!r}: "
                f"pass --model {recorded.get('name')}."
            )
        overrides = {**ModelConfig.from_dict(recorded).to_dict(), **{k: v for k, v in overrides.items() if v}}
        overrides.pop("name", None)
    if get_config(opts.model).family == "swin":
        overrides["input_size"] = opts.input_size
    model = build_model(opts.model, pretrained=opts.pretrained, weights=opts.weights, **overrides)
    return export_torch_model(model, output, opts)


def _parser() -> argparse.ArgumentParser:
    d = ExportOptions()
    p = Parser(prog="python -m exporters.export", description=__doc__.split("\n\n")[0])

    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument(
        "--model",
        type=model_name,
        default=d.model,
        help="a configuration of models.configs, e.g. paper (an unknown name lists all)",
    )
    p.add_argument(
        "--input-size",
        type=int_in(32, 4096, "pixels"),
        default=d.input_size,
        help="square input size in pixels (multiple of 32)",
    )
    p.add_argument(
        "--opset",
        type=int,
        choices=SUPPORTED_OPSETS,
        default=d.opset,
        help=f"ONNX opset, one of {', '.join(map(str, SUPPORTED_OPSETS))}",
    )
    p.add_argument(
        "--exporter", choices=EXPORTERS, default=d.exporter, help="torch exporter: legacy (TorchScript) or dynamo"
    )
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch axis dynamic")
    p.add_argument(
        "--target",
        type=target_name,
        help=f"device profile ({', '.join(sorted(TARGETS))}): lowers the opset and unfuses attention where the device "
        "needs it",
    )
    p.add_argument(
        "--fused-attn",
        dest="fused_attn",
        action="store_true",
        default=None,
        help="keep timm's fused attention (none given: on for opset >= 14 unless the target forbids)",
    )
    p.add_argument(
        "--no-fused-attn",
        dest="fused_attn",
        action="store_false",
        default=argparse.SUPPRESS,  # its own default (True) is not the option's: see --fused-attn
        help="decompose attention into MatMul/Softmax (what the structural passes and TensorRT 8.2 need)",
    )
    p.add_argument("--weights", help="weights file (.safetensors, or a torch state dict / training checkpoint)")
    p.add_argument("--pretrained", action="store_true", help="timm ImageNet backbone weights (needs the network)")
    p.add_argument("--decoder-width", type=positive_int, help="override the configuration's UPerNet width")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=d.seed,
        help="seed of the random init and of the parity input (default: %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=non_negative,
        default=d.tolerance,
        help="max abs onnxruntime-vs-torch error allowed (>= 0)",
    )
    p.add_argument("-o", "--output", required=True, help="output .onnx path (an existing file: only with --force)")
    p.add_argument("--force", action="store_true", help="replace an existing -o (an earlier export)")
    return p


@cli_main("python -m exporters.export")
def main(argv: list[str] | None = None) -> int:
    """CLI: 0 written, 1 the export failed, 2 usage error. Every option, the weights file and the output path are
    checked before torch is imported (by :func:`export`): ``--help`` and usage errors answer at once."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    keys = ("output", "verbose", "force")
    opts = ExportOptions(**{k: v for k, v in vars(args).items() if k not in keys})
    _validate(ExportOptions(**asdict(opts)))  # a copy: export() validates (and lowers for the target) again
    check_distinct([opts.weights], [("-o", args.output)])
    check_output_path(args.output)
    check_not_replacing("-o", args.output, args.force, "an earlier export")
    if opts.weights is not None and not Path(opts.weights).is_file():
        raise PassError(f"--weights {opts.weights}: no such file.")
    res = export(opts, args.output)
    print(
        f"{res.path}: {opts.model} {opts.exporter} opset {res.options['opset']} {opts.input_size}x{opts.input_size}"
        f" | params {res.params / 1e6:.2f}M | FLOPs {res.flops / 1e9:.2f}G | onnxruntime vs torch max abs "
        f"{res.max_abs_error:.2e} | {res.seconds:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
