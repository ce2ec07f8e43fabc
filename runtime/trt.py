"""TensorRT engines from ONNX, with LayerNorm / Softmax kept in FP32 when FP16 loses accuracy.

``python -m runtime.trt build model.onnx --fp16 -o model.engine [--workspace-mb 1024] [--timing-cache path]
[--fp32-layers auto|none|layernorm,softmax] [--threshold 0.99] [--batch 1]``

TensorRT is imported lazily: without it the command says so, how to get it, and exits 1 (this machine has no GPU;
use ``python -m runtime.bundle`` and build on the device). The TensorRT calls (parse, FP16 flag, FP32 constraints
with ``OBEY_PRECISION_CONSTRAINTS`` / 8.2's ``STRICT_TYPES``, workspace through ``set_memory_pool_limit`` or 8.2's
``max_workspace_size``, timing cache) live in ``runtime/device_scripts/build_engine.py``, the Python-3.6 script the
bundle ships, so the workstation and the device build identically.

Which layers stay in FP32 is decided on the ONNX graph (:func:`fp32_selection`, a pure function over node names, op
types and tensor names):

* **LayerNorm**: a ``LayerNormalization`` node, or the decomposed pattern of opset < 17 exports
  ``m = ReduceMean(x); d = Sub(x, m); v = ReduceMean(Pow(d, 2) | Mul(d, d)); y = Div(d, Sqrt(Add(v, eps)))``
  (or ``Mul(d, Reciprocal(Sqrt(...)))``), followed by the affine ``Mul(scale)`` and ``Add(bias)`` when present;
  in FP16 the variance ``mean(d^2)`` overflows above 65504 (d > 256) or underflows for small activations;
* **Softmax** nodes: ``exp`` of large logits overflows in FP16.

``auto`` (the default with ``--fp16``) builds FP16 without constraints, compares it on one seeded ``N(0, 1)`` input
with onnxruntime's FP32 output by pixel agreement (fraction of pixels with the same argmax class), and when that is
below ``--threshold`` rebuilds with LayerNorm and Softmax in FP32 and reports both agreements.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fileformat.args import Parser, fraction, positive_int
from fileformat.cli import HelpFormatter, cli_main
from fileformat.errors import MissingInputError, PassError, UsageError
from fileformat.io import check_distinct
from runtime.device_scripts.build_engine import FP32_KINDS, match_layers, parse_fp32_layers, pixel_agreement

if TYPE_CHECKING:  # loaded when a model is read: --help answers without it
    import onnx

__all__ = [
    "FP32_KINDS",
    "BuildConfig",
    "NodeInfo",
    "TensorRTUnavailable",
    "build_engine",
    "fp32_selection",
    "layernorm_groups",
    "match_layers",
    "node_infos",
    "parse_fp32_layers",
    "pixel_agreement",
    "tensorrt_missing_message",
]

log = logging.getLogger(__name__)


class TensorRTUnavailable(PassError, RuntimeError):
    """The ``tensorrt`` Python package cannot be imported here."""


def tensorrt_missing_message(detail: str = "") -> str:
    """What to tell a user who runs a TensorRT command without TensorRT."""
    return (
        "TensorRT is needed for this command, but the Python package `tensorrt` cannot be imported here"
        + (f" ({detail})" if detail else "")
        + ".\n  On a Jetson it comes with JetPack (JetPack 4.6 = TensorRT 8.2 for the Nano: "
        "`sudo apt install python3-libnvinfer`).\n  On an x86 machine with an NVIDIA GPU and driver: "
        "`pip install tensorrt` (and `pip install polygraphy` for the accuracy check of --fp32-layers auto).\n"
        "  Without a GPU, write the device bundle instead and build there: "
        "`python -m runtime.bundle model.onnx --target jetson-nano -o bundle/`."
    )


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(tensorrt_missing_message(str(exc))) from None
    return trt


# ------------------------------------------------------------------------------------ layer selection (pure)


class NodeInfo(NamedTuple):
    """What the selection needs of an ONNX node."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def node_infos(model: onnx.ModelProto) -> list[NodeInfo]:
    """:class:`NodeInfo` of every node of ``model``'s main graph (unnamed nodes get ``<op>_<index>``)."""
    return [
        NodeInfo(n.name or f"{n.op_type}_{i}", n.op_type, tuple(n.input), tuple(n.output))
        for i, n in enumerate(model.graph.node)
    ]


def layernorm_groups(nodes: Sequence[NodeInfo]) -> list[list[NodeInfo]]:
    """The LayerNorm instances of a graph: ``[node]`` per ``LayerNormalization``, the 7-9 nodes of each decomposed
    pattern (module docstring) otherwise, in graph order."""
    consumers: dict[str, list[NodeInfo]] = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            consumers[i].append(n)

    def only(tensor: str, *ops: str, with_input: str | None = None) -> NodeInfo | None:
        for c in consumers.get(tensor, []):
            if c.op_type in ops and (with_input is None or with_input in c.inputs):
                return c
        return None

    groups: list[list[NodeInfo]] = []
    for n in nodes:
        if n.op_type == "LayerNormalization":
            groups.append([n])
            continue
        if n.op_type != "ReduceMean" or not n.inputs:
            continue
        x, mean = n.inputs[0], n.outputs[0]
        sub = only(mean, "Sub", with_input=x)
        if sub is None or sub.inputs[0] != x:
            continue
        d = sub.outputs[0]
        square = only(d, "Pow") or next(
            (c for c in consumers.get(d, []) if c.op_type == "Mul" and c.inputs[0] == c.inputs[1] == d), None
        )
        var = only(square.outputs[0], "ReduceMean") if square else None
        add_eps = only(var.outputs[0], "Add") if var else None
        sqrt = only(add_eps.outputs[0], "Sqrt") if add_eps else None
        if sqrt is None:
            continue
        group = [n, sub, square, var, add_eps, sqrt]
        div = only(sqrt.outputs[0], "Div", with_input=d)
        if div is not None:
            group.append(div)
            last = div
        else:
            rec = only(sqrt.outputs[0], "Reciprocal")
            mul = only(rec.outputs[0], "Mul", with_input=d) if rec else None
            if mul is None:
                continue
            group += [rec, mul]
            last = mul
        nxt = consumers.get(last.outputs[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Mul":
            group.append(nxt[0])
            nxt = consumers.get(nxt[0].outputs[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                group.append(nxt[0])
        groups.append(group)  # type: ignore[arg-type]
    return groups


def fp32_selection(nodes: Sequence[NodeInfo], kinds: Sequence[str] = FP32_KINDS) -> dict[str, dict[str, list[str]]]:
    """``{kind: {"nodes": [names], "tensors": [output names]}}`` of the nodes to keep in FP32, per kind.

    This is the ``fp32_layers.json`` of the bundle, read by ``build_engine.py`` and matched to TensorRT layers by
    :func:`runtime.device_scripts.build_engine.match_layers`.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for kind in kinds:
        if kind == "layernorm":
            picked = [n for g in layernorm_groups(nodes) for n in g]
        elif kind == "softmax":
            picked = [n for n in nodes if n.op_type == "Softmax"]
        else:
            raise ValueError(f"unknown kind {kind!r}; use {FP32_KINDS}")
        out[kind] = {"nodes": [n.name for n in picked], "tensors": [o for n in picked for o in n.outputs if o]}
    return out


# ------------------------------------------------------------------------------------------------- building


@dataclass
class BuildConfig:
    """One engine build. ``fp32_layers``: "auto", () for none, or kinds from ``FP32_KINDS``."""

    onnx: str
    output: str
    fp16: bool = False
    workspace_mb: int = 1024
    timing_cache: str | None = None
    fp32_layers: str | tuple[str, ...] = "auto"
    threshold: float = 0.99
    batch: int = 1
    seed: int = 0


@dataclass
class BuildResult:
    """What was built: the engine path, the layers kept in FP32 and the measured pixel agreements."""

    engine: str
    tensorrt: str
    fp16: bool
    constrained_layers: list[str] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)


def _onnxruntime_reference(path: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    from fileformat.session import SessionConfig, load_session

    sess = load_session(path, SessionConfig(spinning=True, log_severity=None))
    return np.asarray(sess.run(None, feed)[0], np.float32)


def _run_trt(engine_bytes: bytes, feed: dict[str, np.ndarray]) -> np.ndarray:
    """One inference with polygraphy's TensorRT runner (handles the 8.x and 10 APIs)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(engine_bytes)) as runner:
        out = runner.infer(feed)
    return np.asarray(next(iter(out.values())), np.float32)


def _build_serialized(*args: Any) -> tuple[bytes, list[str]]:
    """The device script's ``build_serialized`` (Python 3.6, standalone: it raises ``RuntimeError`` where TensorRT
    cannot parse or build the model), its failures raised as :class:`PassError` with the same message."""
    from runtime.device_scripts.build_engine import build_serialized

    try:
        return build_serialized(*args)
    except RuntimeError as exc:
        raise PassError(str(exc)) from exc


def build_engine(config: BuildConfig) -> BuildResult:
    """Build ``config.onnx`` into ``config.output`` (raises :class:`TensorRTUnavailable` without TensorRT, and
    :class:`PassError` when TensorRT cannot parse or build the model)."""
    trt = _import_tensorrt()
    import onnx

    model = onnx.load(config.onnx, load_external_data=False)
    selection = fp32_selection(node_infos(model))
    kinds = config.fp32_layers
    result = BuildResult(engine=config.output, tensorrt=trt.__version__, fp16=config.fp16)
    if kinds == "auto" and config.fp16:
        rng = np.random.default_rng(config.seed)
        feed = {}
        for inp in model.graph.input:
            dims = [d.dim_value if d.dim_value > 0 else config.batch for d in inp.type.tensor_type.shape.dim]
            feed[inp.name] = rng.standard_normal(dims).astype(np.float32)
        want = _onnxruntime_reference(config.onnx, feed)
        engine, _ = _build_serialized(
            config.onnx, True, config.workspace_mb, config.timing_cache, None, (), config.batch, log.info
        )
        result.agreement["fp16"] = pixel_agreement(want, _run_trt(engine, feed))
        log.info("FP16 pixel agreement with onnxruntime FP32: %.4f", result.agreement["fp16"])
        if result.agreement["fp16"] < config.threshold:
            engine, names = _build_serialized(
                config.onnx, True, config.workspace_mb, config.timing_cache, selection, FP32_KINDS, config.batch
            )
            result.constrained_layers = names
            result.agreement["fp16_constrained"] = pixel_agreement(want, _run_trt(engine, feed))
    else:
        fixed = () if kinds == "auto" or not config.fp16 else tuple(kinds)
        engine, result.constrained_layers = _build_serialized(
            config.onnx, config.fp16, config.workspace_mb, config.timing_cache, selection, fixed, config.batch, log.info
        )
    from fileformat.io import atomic_write_text

    tmp = Path(config.output + ".tmp")
    tmp.write_bytes(engine)
    tmp.replace(config.output)
    atomic_write_text(config.output + ".json", json.dumps(asdict(result), indent=2) + "\n")
    return result


# ------------------------------------------------------------------------------------------------------ CLI


def _kinds(text: str) -> str | tuple[str, ...]:
    try:
        return parse_fp32_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = Parser(prog="python -m runtime.trt", description=__doc__.splitlines()[0], formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an engine from an ONNX model", formatter_class=fmt)
    b.add_argument("model", help="ONNX model")
    b.add_argument("-o", "--output", required=True, help="engine file to write")
    b.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    b.add_argument("--workspace-mb", type=positive_int, default=1024, help="builder workspace limit in MiB")
    b.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")
    b.add_argument(
        "--fp32-layers",
        type=_kinds,
        default="auto",
        help="layers kept in FP32 with --fp16: auto (only if agreement drops) | none | e.g. layernorm,softmax",
    )
    b.add_argument(
        "--threshold", type=fraction, default=0.99, help="pixel agreement below which auto constrains, in (0, 1]"
    )
    b.add_argument("--batch", type=positive_int, default=1, help="batch for a dynamic batch dimension")
    b.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks on errors")
    return p


@cli_main("python -m runtime.trt")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 built, 1 cannot build (TensorRT missing, bad model), 2 usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    check_distinct([args.model, args.timing_cache], [("-o", args.output)])
    if Path(args.output).is_dir():
        raise UsageError(f"-o {args.output} is a folder; give a file path.")
    if not Path(args.model).is_file():
        raise MissingInputError(f"{args.model}: no such file")
    config = BuildConfig(
        onnx=args.model,
        output=args.output,
        fp16=args.fp16,
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        fp32_layers=args.fp32_layers,
        threshold=args.threshold,
        batch=args.batch,
    )
    result = build_engine(config)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
