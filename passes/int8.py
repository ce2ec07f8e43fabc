"""Static INT8 post-training quantization in QDQ form (onnxruntime.quantization), for CPUs and Jetson Orin.

``python -m passes.int8 model.onnx -o model_int8.onnx --calib DATA [--calib-count 32] [--target cpu|jetson-orin|...]
[--symmetric|--asymmetric] [--method minmax|entropy|percentile] [--exclude OP_OR_NODE ...] [--report r.json]``

What it does, in order:

1. refuses a model that is already quantized (it holds QuantizeLinear/DequantizeLinear) or already FP16;
2. runs onnxruntime's pre-processing (``quant_pre_process``: symbolic shape inference, basic graph optimisation,
   shape inference) and keeps its result when it succeeds and still holds the same ops to quantize; otherwise goes
   on with the model as given (the report says which);
3. picks the nodes to leave in float: every ``LayerNormalization``, decomposed LayerNorm chain
   (:func:`passes._core.layernorm.find_layernorm_chains`) and ``Softmax``, the classifier (the last ``Conv`` before the
   output), plus ``--exclude`` (op types, node names or shell patterns on node names);
4. calibrates on images streamed from DATA (a tqdm bar; ``--calib-count`` of them) and writes QDQ nodes with
   ``quantize_static``: INT8 weights, symmetric, per output channel; INT8 activations, symmetric or asymmetric by
   target (below). Ranges: ``minmax`` (observed min/max), ``entropy`` (KL-divergence threshold) or ``percentile``
   (``--percentile``, default 99.999).

Activations per target (``--target``; default: the target recorded in the model by the exporter, else ``cpu``):

* **asymmetric** for onnxruntime targets (``cpu``): a zero point lets one-sided tensors (after SiLU, ReLU, Sigmoid,
  softmax-weighted sums) use all 256 levels instead of half of them, which keeps accuracy, and onnxruntime's INT8
  kernels take zero points at no cost;
* **symmetric** (zero point 0) for TensorRT targets (``jetson-orin``, ``jetson-nano``): TensorRT only imports
  symmetric QDQ (``passes.check_target`` rejects the rest).

``--symmetric`` / ``--asymmetric`` override the target's choice; the summary says which was used and why.

Quantized op types default to the ones that carry the arithmetic: ``Conv``, ``MatMul`` (only with a constant
weight: activation x activation attention products stay float, they quantize badly), ``Gemm``. Symmetric INT8
stores ``q = clip(round(x / s), -127, 127)`` with ``s = max|x| / 127`` per tensor (per output channel for weights);
asymmetric INT8 stores ``q = clip(round(x / s) + z, -128, 127)`` with ``s = (max - min) / 255`` and the zero point
``z`` that maps ``min`` to -128 (the range always includes 0).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fileformat.args import percent
from fileformat.cli import cli_main
from passes._parser import add_calibration_arguments, make_parser, parse_early

METHODS = ("minmax", "entropy", "percentile")
OP_TYPES = ("Conv", "MatMul", "Gemm")  # quantized by default


def percentile(text: str) -> float:
    """``--percentile``: in (0, 100]."""
    value = percent(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not in (0, 100]")
    return value


def _parser() -> argparse.ArgumentParser:
    p = make_parser("python -m passes.int8", "Static INT8 quantization (QDQ) calibrated on images.")
    add_calibration_arguments(p, "calibration images", 32, required=True)
    p.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (default minmax)")
    p.add_argument("--percentile", type=percentile, default=99.999, help="for --method percentile (default 99.999)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default per channel)")
    p.add_argument(
        "--target",
        default=None,
        help="device profile (cpu, jetson-orin, jetson-nano; 'orin', 'nano' also work): asymmetric activations for "
        "onnxruntime (cpu), symmetric for TensorRT (default: the target recorded in the model, else cpu)",
    )
    sym = p.add_mutually_exclusive_group()
    sym.add_argument(
        "--symmetric",
        dest="symmetric",
        action="store_const",
        const=True,
        default=None,
        help="symmetric activations (zero point 0) whatever the target",
    )
    sym.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_const",
        const=False,
        help="asymmetric activations whatever the target (TensorRT cannot import them)",
    )
    p.add_argument(
        "--op-types",
        nargs="+",
        default=list(OP_TYPES),
        metavar="OP",
        help="op types to quantize (default Conv MatMul Gemm)",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="OP_OR_NODE",
        help="op types, node names or shell patterns on node names to leave in float (besides the defaults)",
    )
    p.add_argument("--no-default-exclusions", action="store_true", help="also quantize LayerNorm/Softmax/classifier")
    p.add_argument("--no-preprocess", action="store_true", help="skip onnxruntime's quant_pre_process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx

from fileformat.errors import PassError
from fileformat.metadata import append_history, read_metadata
from fileformat.targets import resolve_target
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.layernorm import find_layernorm_chains
from passes._core.precision import already_fp16, match_nodes, name_nodes
from passes._core.report import PassReport
from passes._core.stats import GraphStats, graph_stats

__all__ = [
    "METHODS",
    "Int8Config",
    "Int8Result",
    "activation_symmetry",
    "classifier_convs",
    "default_exclusions",
    "describe",
    "is_quantized",
    "main",
    "quantize_int8",
    "run_int8",
]

logger = logging.getLogger(__name__)

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear")


@dataclass(frozen=True)
class Int8Config:
    """Options of :func:`quantize_int8`.

    Attributes:
        method: calibration method, one of ``METHODS``.
        percentile: the percentile of ``|x|`` taken as the range by the ``percentile`` method.
        per_channel: one weight scale per output channel (else per tensor).
        target: device profile deciding the activations' symmetry (``None``: the model's recorded target, else
            ``cpu``).
        symmetric_activations: zero point 0 for activations; ``None`` (default) decides by target: asymmetric for
            onnxruntime (cpu), symmetric for TensorRT.
        symmetric_weights: zero point 0 for weights (TensorRT needs it; onnxruntime takes it as well).
        op_types: op types to quantize.
        matmul_const_b_only: quantize a MatMul only when its second input is a constant (a weight).
        default_exclusions: leave LayerNorm (and decomposed chains), Softmax and the classifier conv in float.
        exclude: extra op types, node names or shell patterns on node names to leave in float.
        preprocess: run onnxruntime's ``quant_pre_process`` first.
    """

    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    target: str | None = None
    symmetric_activations: bool | None = None
    symmetric_weights: bool = True
    op_types: tuple[str, ...] = OP_TYPES
    matmul_const_b_only: bool = True
    default_exclusions: bool = True
    exclude: tuple[str, ...] = ()
    preprocess: bool = True


def activation_symmetry(model: onnx.ModelProto, config: Int8Config) -> tuple[bool, str, str]:
    """``(symmetric, target name, why)`` for the activations of ``model`` under ``config``.

    Raises:
        PassError: ``config.target`` (or the model's recorded target) names no known device profile.
    """
    name, source = config.target, "--target"
    if name is None:
        recorded = read_metadata(model).get("target")
        name, source = (recorded, "recorded in the model") if recorded else ("cpu", "default; the model records none")
    profile = resolve_target(name)
    target = f"{profile.name} ({source})"
    if config.symmetric_activations is not None:
        kind = "--symmetric" if config.symmetric_activations else "--asymmetric"
        return config.symmetric_activations, target, f"{kind} given"
    if profile.runtime == "tensorrt":
        return True, target, f"TensorRT ({profile.name}) imports only symmetric INT8 (zero point 0)"
    return (
        False,
        target,
        (f"{profile.runtime} ({profile.name}) takes zero points: one-sided activations keep all 256 levels"),
    )


def is_quantized(model: onnx.ModelProto) -> list[str]:
    """Names of the quantization nodes in ``model`` (empty for a float model)."""
    return [n.name or n.op_type for n in model.graph.node if n.op_type in _QDQ_OPS]


def classifier_convs(model: onnx.ModelProto) -> list[str]:
    """The last ``Conv`` on the way to each graph output (walking producers back from the output, breadth first)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    for out in model.graph.output:
        frontier, seen = [out.name], set()
        while frontier:
            nxt: list[str] = []
            hit = None
            for tensor in frontier:
                node = producers.get(tensor)
                if node is None or node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Conv":
                    hit = node
                    break
                nxt.extend(i for i in node.input if i)
            if hit is not None:
                if hit.name not in found:
                    found.append(hit.name)
                break
            frontier = nxt
    return found


def default_exclusions(model: onnx.ModelProto) -> dict[str, str]:
    """``{node name: reason}`` of the nodes left in float by default (LayerNorm, Softmax, the classifier)."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "LogSoftmax", "GroupNormalization"):
            out[node.name] = f"{node.op_type} (sensitive to quantization)"
    for chain in find_layernorm_chains(model):
        for name in chain:
            out.setdefault(name, f"decomposed LayerNorm starting at {chain[0]}")
    for name in classifier_convs(model):
        out.setdefault(name, "classifier (last Conv before the output)")
    return out


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose second input is computed (not an initializer, Constant or Identity of one)."""
    consts = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.input[0] in consts):
            consts.update(node.output)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in consts]


def _float_inputs_for_excluded(model: onnx.ModelProto, excluded: set[str]) -> int:
    """Let excluded nodes read the float tensor ``t`` instead of ``DequantizeLinear(QuantizeLinear(t))``.

    onnxruntime puts one Q/DQ pair on a tensor that a quantized node reads and rewires every reader to it; an
    excluded node then computes in float on an INT8-rounded input. Returns the number of inputs restored.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    restored = 0
    for node in model.graph.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                restored += 1
    return restored


class _FeedReader:
    """``CalibrationDataReader`` over a stream of feeds, counting what it hands out (first feed already drawn)."""

    def __init__(self, first: dict[str, np.ndarray], rest: Iterator[dict[str, np.ndarray]]) -> None:
        self._first: dict[str, np.ndarray] | None = first
        self._rest = rest
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._first is not None:
            feed, self._first = self._first, None
        else:
            feed = next(self._rest, None)
        if feed is not None:
            self.count += 1
        return feed

    def __iter__(self) -> _FeedReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def _calibrate(
    model: Path, augmented: Path, cache: Path, reader: _FeedReader, method: Any, config: Int8Config, symmetric: bool
) -> None:
    """Collect activation ranges with onnxruntime's calibrator and save them where ``quantize_static`` reads them.

    Done here rather than inside ``quantize_static`` because that one cannot set the histogram sizes: its entropy
    calibration uses 128 bins for 128 quantized levels, which makes the KL threshold the plain maximum. Entropy
    here uses 512 histogram bins for 128 levels (TensorRT uses 2048; the KL search costs O(bins^2) per tensor in
    Python); percentile 2048 bins.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    options: dict[str, Any] = {"symmetric": symmetric}
    if method == CalibrationMethod.Entropy:
        options.update(num_bins=512, num_quantized_bins=128)
    elif method == CalibrationMethod.Percentile:
        options.update(num_bins=2048, percentile=config.percentile)
    calibrator = create_calibrator(
        model,
        list(config.op_types),
        augmented_model_path=str(augmented),
        calibrate_method=method,
        extra_options=options,
    )
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the histogram calibrators print progress
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    logger.debug("calibrator: %s", chatter.getvalue().strip())
    save_tensors_data(ranges, cache)


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Temporarily change the process's working directory (``contextlib.chdir`` needs Python 3.11)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    """Run ``quant_pre_process`` (full, then without symbolic shape inference); return the path to quantize."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts: list[tuple[str, dict[str, Any]]] = [("full", {}), ("no symbolic shapes", {"skip_symbolic_shape": True})]
    for label, kwargs in attempts:
        try:
            # on failure, onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx (+ data) into the
            # working directory: run it from the temporary folder
            with _working_dir(dst.parent):
                quant_pre_process(str(src), str(dst), **kwargs)
            onnx.checker.check_model(str(dst))
        except Exception as exc:  # onnxruntime raises many types here; any failure means: do without it
            logger.info("quant_pre_process (%s) failed: %s", label, exc)
            continue
        before = Counter(n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node)
        after = Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
        notes.append(
            f"onnxruntime pre-processing ({label}) applied: {sum(before.values())} -> {sum(after.values())} nodes"
        )
        return dst
    notes.append("onnxruntime pre-processing failed on this model; quantized the model as given")
    return src


@dataclass
class Int8Result:
    """What :func:`run_int8` wrote: the QDQ model, the nodes left in float with the reason, the float inputs given
    back to excluded nodes, the calibration images used, the activations' symmetry (for which target, and why) and
    the pre-processing notes."""

    model: onnx.ModelProto
    before: GraphStats
    after: GraphStats
    excluded: dict[str, str] = field(default_factory=dict)
    restored: int = 0
    images: int = 0
    symmetric: bool = True
    target: str = ""
    why: str = ""
    notes: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # onnxruntime CalibrationMethod


def _check_float_model(model: onnx.ModelProto, config: Int8Config) -> None:
    """Refuse an unknown method, a quantized or an FP16 model."""
    if config.method not in METHODS:
        raise PassError(f"unknown calibration method {config.method!r}; choose one of {', '.join(METHODS)}")
    qnodes = is_quantized(model)
    if qnodes:
        raise PassError(
            f"the model is already quantized ({len(qnodes)} quantization nodes, e.g. {qnodes[0]}); "
            "quantize the float32 model instead."
        )
    fp16 = already_fp16(model)
    if fp16:
        raise PassError(f"the model is FP16 ({fp16}); INT8 quantization starts from the float32 model.")


def _exclusions(pre: onnx.ModelProto, config: Int8Config) -> dict[str, str]:
    """``{node: reason}`` of the nodes left in float: the defaults, MatMuls of two activations, ``exclude``."""
    excluded = default_exclusions(pre) if config.default_exclusions else {}
    if config.matmul_const_b_only:
        excluded.update({n: "MatMul of two activations (quantizes badly)" for n in _activation_matmuls(pre)})
    for pat, hits in match_nodes(pre, config.exclude).items():
        if not hits:
            raise PassError(f"--exclude {pat!r} matches no op type or node name of the model; check the spelling.")
        for name in hits:
            excluded.setdefault(name, f"--exclude {pat}")
    return excluded


def _quantize(
    path: Path, tmp: Path, excluded: dict[str, str], reader: _FeedReader, config: Int8Config, symmetric: bool
) -> onnx.ModelProto:
    """Calibrate on ``reader`` and write the QDQ model with ``quantize_static``; onnxruntime's failures are a
    :class:`PassError`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = getattr(CalibrationMethod, _METHODS[config.method])
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": config.symmetric_weights}
    out_path = tmp / "int8.onnx"
    cache = tmp / "calibration.json"
    try:
        _calibrate(path, tmp / "augmented.onnx", cache, reader, method, config, symmetric)
        quantize_static(
            str(path),
            str(out_path),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded),
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    except PassError:
        raise
    except Exception as exc:  # onnxruntime's quantizer raises plain exceptions of many types
        raise PassError(f"onnxruntime quantization failed: {type(exc).__name__}: {exc}") from exc
    return onnx.load(str(out_path))


def run_int8(
    model: onnx.ModelProto, calib: Iterable[dict[str, np.ndarray]], config: Int8Config | None = None
) -> Int8Result:
    """A QDQ INT8 copy of ``model`` (not changed) calibrated on the feeds ``calib``.

    Raises:
        PassError: the model is already quantized or FP16, no calibration feed, an ``exclude`` entry matches
            nothing, an unknown method, or quantization fails.
    """
    config = config or Int8Config()
    _check_float_model(model, config)
    symmetric, target, sym_why = activation_symmetry(model, config)
    stream = iter(calib)
    first = next(stream, None)
    if first is None:
        raise PassError("no calibration images: give a folder with images (--calib DATA) and --calib-count >= 1.")
    stats = graph_stats(model)
    result = Int8Result(model, stats, stats, symmetric=symmetric, target=target, why=sym_why)
    work = copy.deepcopy(model)
    del work.graph.value_info[:]  # stale after any rewrite (the dynamo exporter writes them all)
    name_nodes(work)
    reader = _FeedReader(first, stream)
    with tempfile.TemporaryDirectory(prefix="vitseg-int8-") as tmp:
        src = Path(tmp) / "in.onnx"
        onnx.save_model(work, str(src))
        path = _preprocess(src, Path(tmp) / "pre.onnx", result.notes) if config.preprocess else src
        pre = onnx.load(str(path))
        name_nodes(pre)
        onnx.save_model(pre, str(path))
        result.excluded = _exclusions(pre, config)
        quantized = _quantize(path, Path(tmp), result.excluded, reader, config, symmetric)
    result.restored = _float_inputs_for_excluded(quantized, set(result.excluded))
    out = finalize(quantized)
    result.images = reader.count
    append_history(
        out,
        {
            "pass": "int8",
            "method": config.method,
            "calib_images": reader.count,
            "per_channel": config.per_channel,
            "symmetric": [symmetric, config.symmetric_weights],
            "target": target.split(" (")[0],
            "excluded": len(result.excluded),
        },
    )
    result.model, result.after = out, graph_stats(out)
    result.bytes_before, result.bytes_after = model.ByteSize(), out.ByteSize()
    return result


def describe(result: Int8Result, config: Int8Config | None = None) -> PassReport:
    """The report of a :func:`run_int8`: per quantized op type the nodes that compute on dequantized inputs, a skip
    per node left in float, the calibration and the sizes."""
    config = config or Int8Config()
    out = result.model
    report = PassReport("int8", columns=["op", "nodes", "quantized", "float"])
    report.notes.extend(result.notes)
    producers = {o: n for n in out.graph.node for o in n.output}
    per_op: dict[str, Counter[str]] = {}
    quantized_nodes: list[str] = []
    for node in out.graph.node:
        if node.op_type in _QDQ_OPS or node.op_type not in config.op_types:
            continue
        fed_q = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
        per_op.setdefault(node.op_type, Counter())["quantized" if fed_q else "float"] += 1
        if fed_q:
            quantized_nodes.append(node.name)
    for op, c in sorted(per_op.items()):
        report.rows.append(
            {"op": op, "nodes": c["quantized"] + c["float"], "quantized": c["quantized"], "float": c["float"]}
        )
    for name, why in sorted(result.excluded.items()):
        report.skip(name, "kept float: " + why)
    report.modified = True
    report.params_before, report.params_after = result.before.params, result.after.params
    report.flops_before, report.flops_after = result.before.flops, result.after.flops
    n_qdq = Counter(n.op_type for n in out.graph.node if n.op_type in _QDQ_OPS)
    report.notes.append(
        f"calibration: {result.images} image(s), method {config.method}; weights INT8 "
        f"{'per channel' if config.per_channel else 'per tensor'}, "
        f"{'symmetric' if config.symmetric_weights else 'asymmetric'}; activations INT8 "
        f"{'symmetric' if result.symmetric else 'asymmetric'} for target {result.target}: {result.why}"
    )
    report.notes.append(
        f"size {result.bytes_before / 1e6:.2f} MB -> {result.bytes_after / 1e6:.2f} MB; {len(quantized_nodes)} nodes "
        f"quantized; {n_qdq.get('QuantizeLinear', 0)} QuantizeLinear, {n_qdq.get('DequantizeLinear', 0)} "
        "DequantizeLinear"
    )
    report.extra = {
        "quantized_nodes": quantized_nodes,
        "excluded": dict(sorted(result.excluded.items())),
        "float_inputs_restored": result.restored,
        "calibration": {"images": result.images, "method": config.method, "percentile": config.percentile},
        "activations": {"symmetric": result.symmetric, "target": result.target, "why": result.why},
        "bytes_before": result.bytes_before,
        "bytes_after": result.bytes_after,
    }
    return report


def quantize_int8(
    model: onnx.ModelProto, calib: Iterable[dict[str, np.ndarray]], config: Int8Config | None = None
) -> tuple[onnx.ModelProto, PassReport]:
    """Return a QDQ INT8 copy of ``model`` calibrated on the feeds ``calib``, and the report: :func:`run_int8` and
    :func:`describe`.

    Raises:
        PassError: the model is already quantized or FP16, no calibration feed, an ``exclude`` entry matches
            nothing, an unknown method, or quantization fails.
    """
    result = run_int8(model, calib, config)
    return result.model, describe(result, config)


# ----------------------------------------------------------------------------------------------------------- CLI


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    from models.calib import calibration_feeds

    if args.calib_count < 1:
        raise PassError(f"--calib-count must be at least 1, got {args.calib_count}: calibration needs images.")
    if not 0 < args.percentile <= 100:
        raise PassError(f"--percentile must be in (0, 100], got {args.percentile}")
    if args.target is not None:
        resolve_target(args.target)
    config = Int8Config(
        method=args.method,
        percentile=args.percentile,
        per_channel=not args.per_tensor,
        target=args.target,
        symmetric_activations=args.symmetric,
        op_types=tuple(args.op_types),
        default_exclusions=not args.no_default_exclusions,
        exclude=tuple(args.exclude),
        preprocess=not args.no_preprocess,
    )
    qnodes = is_quantized(model)
    if qnodes:  # say so before touching the data
        raise PassError(f"the model is already quantized ({len(qnodes)} quantization nodes); give the float32 model.")
    with calibration_feeds(
        model,
        args.calib,
        split=args.calib_split,
        count=args.calib_count,
        progress=not args.no_progress,
        desc="int8 calib",
    ) as feeds:
        return quantize_int8(model, feeds, config)


@cli_main("python -m passes.int8")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 0 success, 1 model or data unusable, 2 usage error)."""
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
