"""Mixed FP16: compute in float16 except where float16 would overflow, underflow or lose the result.

``python -m passes.fp16 model.onnx -o model_fp16.onnx [--fp16-io] [--keep-fp32 OP_OR_NODE ...] [--calib DATA]
[--clamp] [--report r.json]``

Built on onnxruntime's converter (``onnxruntime.transformers.float16``; onnxconverter-common's fails on the legacy
exporter's attention-scale chain ``Shape -> Slice -> Cast -> Sqrt -> Div`` and clamps at 1e4). Which nodes stay in
float32 is decided here, each with a reason in the report:

* **block list** (op types, ``DEFAULT_FP32_OPS``): normalisations (``LayerNormalization``, ``GroupNormalization``),
  ``Softmax``/``LogSoftmax``, sums of squares (``ReduceSumSquare``, ``ReduceL2``) and the ops onnxruntime has no
  float16 kernel for. ``Resize`` runs in float16 (a convex combination of its inputs cannot overflow); its ``scales``
  input stays float32 as the operator requires.
* **decomposed LayerNorm** (opset-13 exports): ``m = ReduceMean(x)``, ``d = Sub(x, m)``, ``Pow(d, 2)`` (or
  ``Mul(d, d)``), ``v = ReduceMean``, ``Add(v, eps)``, ``Sqrt``, ``Div(d, .)`` and the affine ``Mul(., gamma)``,
  ``Add(., beta)`` that follow. ``d^2`` leaves the float16 range (max 65504) as soon as ``|x - mean(x)| > 256``.
* **constants out of range**: a node reading a weight or constant with a finite ``|w| > 65504``, or a nonzero scalar
  ``|w| < 2^-24`` (it would flush to zero, e.g. a tiny epsilon), stays float32 with its constant unchanged. With
  ``--clamp`` such constants are clamped to +-65504 (and scalars to +-2^-24) instead, never to onnxconverter-common's
  1e4.
* **activations out of range** (``--calib DATA``): the float32 model is run on the images with every intermediate
  tensor exposed; a tensor with ``max |x| * margin > 65504`` keeps its producer and all its readers in float32.
* ``--keep-fp32``: op types, node names, or shell patterns on node names (``/decoder/*``).

The converter casts between a float32 node and the next one through float16; those round trips
(``Cast(to=fp16) -> Cast(to=fp32)``) are removed afterwards, so a chain of float32 nodes passes float32 values, as
the large intermediate ``d^2`` of a LayerNorm requires. Float32 inputs and outputs are kept by default
(``--fp16-io`` makes them float16). A model that already holds float16 tensors is returned unchanged ("already
FP16"): the pass is idempotent.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fileformat.args import positive
from fileformat.cli import cli_main
from passes._parser import add_calibration_arguments, make_parser, parse_early


def _parser() -> argparse.ArgumentParser:
    p = make_parser("python -m passes.fp16", "Mixed FP16 conversion that keeps overflow-prone nodes in FP32.")
    p.add_argument("--fp16-io", action="store_true", help="make the model's inputs and outputs FP16 (default FP32)")
    p.add_argument(
        "--keep-fp32",
        nargs="+",
        action="extend",
        default=[],
        metavar="OP_OR_NODE",
        help="op types, node names or shell patterns on node names to keep in FP32 (in addition to the defaults)",
    )
    p.add_argument(
        "--allow-fp16",
        nargs="+",
        action="extend",
        default=[],
        metavar="OP",
        help="remove op types from the default FP32 list (only where measured safe)",
    )
    p.add_argument("--no-layernorm-chains", action="store_true", help="let decomposed LayerNorm chains run in FP16")
    add_calibration_arguments(p, "images to measure activation ranges on", 16)
    p.add_argument(
        "--calib-margin",
        type=positive,
        default=1.0,
        help="flag a tensor when max|x| * margin > 65504 (default 1.0; e.g. 2 keeps a factor-2 headroom)",
    )
    p.add_argument("--clamp", action="store_true", help="clamp out-of-range constants at +-65504 instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar during calibration")
    return p


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fileformat.errors import PassError
from fileformat.metadata import append_history
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.graph import consumers as _consumers
from passes._core.layernorm import find_layernorm_chains
from passes._core.precision import already_fp16, constant_aliases, float_constants, match_nodes, name_nodes
from passes._core.report import PassReport
from passes._core.stats import GraphStats, graph_stats

__all__ = [
    "DEFAULT_FP32_OPS",
    "FP16_MAX",
    "FP16_TINY",
    "FP16Config",
    "FP16Result",
    "activation_ranges",
    "already_fp16",
    "convert_fp16",
    "describe",
    "find_layernorm_chains",
    "fold_cast_roundtrips",
    "main",
    "match_nodes",
    "run_fp16",
]

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest positive (subnormal) float16, 5.96e-8

# ops onnxruntime's converter keeps in float32 by default because they lack float16 kernels.
_ORT_NO_FP16 = (
    "ArrayFeatureExtractor",
    "Binarizer",
    "CastMap",
    "CategoryMapper",
    "DictVectorizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "RandomUniformLike",
    "SVMClassifier",
    "SVMRegressor",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "ZipMap",
    "NonMaxSuppression",
    "TopK",
    "RoiAlign",
    "Range",
    "CumSum",
    "Min",
    "Max",
    "Upsample",
)
DEFAULT_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "GroupNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceSumSquare",
    "ReduceL2",
    *_ORT_NO_FP16,
)


@dataclass(frozen=True)
class FP16Config:
    """Options of :func:`convert_fp16`.

    Attributes:
        fp16_io: make graph inputs/outputs float16 (default: keep them float32, with casts inside).
        fp32_ops: op types kept in float32.
        keep_fp32: extra op types, node names or ``fnmatch`` patterns on node names kept in float32.
        layernorm_chains: keep decomposed LayerNorm chains (opset-13 exports) in float32.
        clamp: clamp out-of-range constants to +-65504 (+-2^-24 for tiny scalars) instead of keeping their
            readers in float32.
        calib_margin: with calibration data, a tensor is out of range when ``max |x| * calib_margin > 65504``.
    """

    fp16_io: bool = False
    fp32_ops: tuple[str, ...] = DEFAULT_FP32_OPS
    keep_fp32: tuple[str, ...] = ()
    layernorm_chains: bool = True
    clamp: bool = False
    calib_margin: float = 1.0


@dataclass
class _Decision:
    """Nodes kept in float32, each with its reasons."""

    reasons: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def keep(self, node: str, reason: str) -> None:
        if reason not in self.reasons[node]:
            self.reasons[node].append(reason)


# ------------------------------------------------------------------------------------------------ graph helpers


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _out_of_range(value: np.ndarray) -> str | None:
    """Why a constant cannot be stored in float16 unchanged (None if it can)."""
    v = np.asarray(value, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size and np.abs(finite).max() > FP16_MAX:
        return f"holds |x| = {np.abs(finite).max():.4g} > {FP16_MAX:g}"
    if v.size == 1 and 0 < abs(float(v.reshape(-1)[0])) < FP16_TINY:
        return f"is {float(v.reshape(-1)[0]):.3g}, which float16 flushes (|x| < 2^-24)"
    return None


def _clamp_constants(model: onnx.ModelProto, names: set[str]) -> None:
    """Clamp the named float32 constants in place to ``[-65504, 65504]``, scalars away from 0 to ``+-2^-24``."""

    def fix(arr: np.ndarray) -> np.ndarray:
        out = np.where(np.isfinite(arr), np.clip(arr, -FP16_MAX, FP16_MAX), arr).astype(arr.dtype)
        if out.size == 1 and 0 < abs(float(out.reshape(-1)[0])) < FP16_TINY:
            out = (np.sign(out) * FP16_TINY).astype(arr.dtype)
        return out

    for init in model.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(fix(numpy_helper.to_array(init)), init.name))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(fix(numpy_helper.to_array(attr.t)), attr.t.name))
                elif attr.name == "value_float":
                    attr.f = float(fix(np.asarray(attr.f, np.float32)))
                elif attr.name == "value_floats":
                    attr.floats[:] = [float(v) for v in fix(np.asarray(list(attr.floats), np.float32))]


# ------------------------------------------------------------------------------------------------- calibration


def activation_ranges(model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]]) -> tuple[dict[str, float], int]:
    """``({tensor: max |x| over all feeds}, number of feeds)`` for every float tensor a node of ``model`` computes.

    The float32 model runs in onnxruntime (CPU, graph optimisations off, so every tensor exists as written) with
    all intermediate float tensors added as graph outputs.
    """
    from fileformat.session import SessionConfig, load_session

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    graph_outputs = {o.name for o in model.graph.output}
    probe = copy.deepcopy(model)
    names: list[str] = [o.name for o in model.graph.output]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        for o in node.output:
            if o and o not in graph_outputs and types.get(o) == TensorProto.FLOAT:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
                names.append(o)
    session = load_session(probe, SessionConfig(optimization="disable", spinning=True))
    out_names = [o.name for o in session.get_outputs()]
    ranges: dict[str, float] = {}
    count = 0
    for feed in feeds:
        count += 1
        values = session.run(out_names, feed)
        for name, arr in zip(out_names, values):
            a = np.asarray(arr)
            if a.size and np.issubdtype(a.dtype, np.floating):
                finite = a[np.isfinite(a)]
                peak = float(np.abs(finite).max()) if finite.size else 0.0
                ranges[name] = max(ranges.get(name, 0.0), peak)
        for name, arr in feed.items():
            a = np.asarray(arr, dtype=np.float64)
            ranges[name] = max(ranges.get(name, 0.0), float(np.abs(a).max()) if a.size else 0.0)
    return ranges, count


# ------------------------------------------------------------------------------------------------- cast cleanup


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    for attr in node.attribute:
        if attr.name == "to":
            return int(attr.i)
    return None


def fold_cast_roundtrips(model: onnx.ModelProto) -> int:
    """Remove float32 -> float16 -> float32 round trips in place; return how many readers were rewired.

    For ``h = Cast(t, to=fp16)`` with ``t`` float32 and ``u = Cast(h, to=fp32)``: every reader of ``u`` reads ``t``
    instead (exact, where the round trip would round ``t`` to float16 and turn ``|t| > 65504`` into inf). When
    ``u`` is a graph output the second Cast is kept but fed ``t`` (a float32 -> float32 copy). Dead Casts are left
    to :func:`passes._core.finalize.cleanup`.
    """
    producers = _producers(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input})
    types.update({i.name: i.data_type for i in model.graph.initializer})
    graph_outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    rewired = 0
    for node in model.graph.node:
        if _cast_to(node) != TensorProto.FLOAT:
            continue
        src = producers.get(node.input[0])
        if src is None or _cast_to(src) != TensorProto.FLOAT16 or types.get(src.input[0]) != TensorProto.FLOAT:
            continue
        if node.output[0] in graph_outputs:
            node.input[0] = src.input[0]
        else:
            rename[node.output[0]] = src.input[0]
        rewired += 1
    if rename:
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    return rewired


# ------------------------------------------------------------------------------------------------------ the pass


@dataclass
class FP16Result:
    """What :func:`run_fp16` decided and wrote.

    ``model`` is the converted model (a copy of the input when ``already`` says why the input counts as FP16
    already); ``nodes`` the op type of every node of the input (named); ``fp32`` the nodes kept in float32 with
    their reasons; ``chains`` the decomposed LayerNorm chains kept; ``out_of_range`` the constants float16 cannot
    hold and why, ``clamped`` those clamped instead (``--clamp``); ``calibration`` what the activation check saw;
    ``folded`` the FP32 -> FP16 -> FP32 cast round trips removed."""

    model: onnx.ModelProto
    before: GraphStats
    after: GraphStats
    already: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    fp32: dict[str, list[str]] = field(default_factory=dict)
    chains: int = 0
    out_of_range: dict[str, str] = field(default_factory=dict)
    clamped: list[str] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    folded: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def _keep_listed(work: onnx.ModelProto, config: FP16Config, decision: _Decision) -> int:
    """Keep the op types of the FP32 list, the decomposed LayerNorm chains and ``--keep-fp32``; return the number
    of chains."""
    fp32_ops = set(config.fp32_ops)
    for node in work.graph.node:
        if node.op_type in fp32_ops:
            decision.keep(node.name, f"{node.op_type} is on the FP32 op list")
    chains = find_layernorm_chains(work) if config.layernorm_chains else []
    for chain in chains:
        for name in chain:
            decision.keep(name, f"decomposed LayerNorm starting at {chain[0]}")
    for pat, hits in match_nodes(work, config.keep_fp32).items():
        if not hits:
            raise PassError(f"--keep-fp32 {pat!r} matches no op type or node name of the model; check the spelling.")
        for name in hits:
            decision.keep(name, f"--keep-fp32 {pat}")
    return len(chains)


def _out_of_range_constants(
    work: onnx.ModelProto, config: FP16Config, decision: _Decision, aliases: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Constants float16 cannot hold: clamped (``config.clamp``) or kept in float32 with their readers. Returns
    ``(why per constant, the constants clamped)``."""
    bad: dict[str, str] = {}
    for name, arr in float_constants(work).items():
        why = _out_of_range(arr)
        if why is not None:
            bad[name] = why
    for alias, src in aliases.items():
        if src in bad:
            bad[alias] = bad[src]
    if bad and config.clamp:
        clamped = sorted(n for n in bad if n not in aliases)
        _clamp_constants(work, set(clamped))
        return bad, clamped
    consumers, producers = _consumers(work), _producers(work)
    for name, why in bad.items():
        for reader in consumers.get(name, []):
            decision.keep(reader.name, f"reads constant {name} that {why}")
        if name in producers:  # the Constant / Identity node itself keeps its float32 value
            decision.keep(producers[name].name, f"constant {name} {why}")
    return bad, []


def _hot_activations(
    model: onnx.ModelProto,
    work: onnx.ModelProto,
    calib: Iterable[dict[str, np.ndarray]],
    config: FP16Config,
    decision: _Decision,
) -> dict[str, Any]:
    """Keep in float32 the producers and readers of activations that leave the float16 range on the calibration
    feeds; return what the check saw."""
    ranges, count = activation_ranges(model, calib)
    if count == 0:
        raise PassError("calibration data gave no image; give a folder with images or drop --calib.")
    consumers, producers = _consumers(work), _producers(work)
    limit = FP16_MAX / max(config.calib_margin, 1e-12)
    hot = {t: r for t, r in ranges.items() if r > limit}
    for tensor, peak in sorted(hot.items()):
        why = f"activation {tensor} reaches {peak:.4g} on the calibration images (> {limit:.6g})"
        if tensor in producers:
            decision.keep(producers[tensor].name, why)
        for reader in consumers.get(tensor, []):
            decision.keep(reader.name, why)
    return {"images": count, "tensors_checked": len(ranges), "out_of_range": hot}


def _keep_constants_of_fp32_readers(work: onnx.ModelProto, decision: _Decision, aliases: dict[str, str]) -> None:
    """Constants (and Identity aliases of constants) read only by float32 nodes keep their exact float32 value."""
    consumers = _consumers(work)
    changed = True
    while changed:
        changed = False
        for node in work.graph.node:
            if node.name in decision.reasons or node.op_type not in ("Constant", "Identity"):
                continue
            if node.op_type == "Identity" and node.output[0] not in aliases:
                continue
            readers = consumers.get(node.output[0], [])
            if readers and all(r.name in decision.reasons for r in readers):
                decision.keep(node.name, "constant read only by FP32 nodes")
                changed = True


def run_fp16(
    model: onnx.ModelProto,
    config: FP16Config | None = None,
    calib: Iterable[dict[str, np.ndarray]] | None = None,
) -> FP16Result:
    """Decide which nodes stay float32 and convert the rest of a copy of ``model`` (not changed) to float16.

    ``calib`` (input feeds, e.g. from :func:`models.calib.calibration_feeds`) enables the activation-range check.

    Raises:
        PassError: a ``--keep-fp32`` entry matches nothing, calibration was asked for with no feed, or the
            converted model fails the ONNX checks.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    config = config or FP16Config()
    reason = already_fp16(model)
    if reason is not None:
        stats = graph_stats(model)
        return FP16Result(copy.deepcopy(model), stats, stats, already=reason)

    work = copy.deepcopy(model)
    del work.graph.value_info[:]  # stale after any rewrite (the dynamo exporter writes them all)
    name_nodes(work)
    decision = _Decision()
    result = FP16Result(work, graph_stats(model), graph_stats(model))
    result.nodes = {n.name: n.op_type for n in work.graph.node}
    result.chains = _keep_listed(work, config, decision)
    aliases = constant_aliases(work)
    result.out_of_range, result.clamped = _out_of_range_constants(work, config, decision, aliases)
    if calib is not None:
        result.calibration = _hot_activations(model, work, calib, config, decision)
    _keep_constants_of_fp32_readers(work, decision, aliases)

    blocked = sorted(decision.reasons)
    converted = convert_float_to_float16(
        work,
        keep_io_types=not config.fp16_io,
        op_block_list=[],
        node_block_list=blocked,
        max_finite_val=FP16_MAX,
        min_positive_val=FP16_TINY,
    )
    result.folded = fold_cast_roundtrips(converted)
    del converted.graph.value_info[:]
    out = finalize(converted)
    append_history(
        out,
        {
            "pass": "fp16",
            "fp16_io": config.fp16_io,
            "fp32_nodes": len(blocked),
            "clamped": len(result.clamped),
            "calib_images": result.calibration.get("images", 0),
        },
    )
    result.model, result.after = out, graph_stats(out)
    result.fp32 = {n: decision.reasons[n] for n in blocked}
    result.bytes_before, result.bytes_after = model.ByteSize(), out.ByteSize()
    return result


def describe(result: FP16Result, config: FP16Config | None = None) -> PassReport:
    """The report of a :func:`run_fp16`: a row per op type (nodes in FP16 and FP32), a skip per FP32 node with its
    reasons, the notes and the totals."""
    config = config or FP16Config()
    report = PassReport("fp16", columns=["op", "nodes", "fp16", "fp32"])
    report.params_before, report.flops_before = result.before.params, result.before.flops
    report.params_after, report.flops_after = result.after.params, result.after.flops
    if result.already is not None:
        report.nothing_to_do = (
            f"already FP16 ({result.already}). To convert with other options, start from the FP32 model"
        )
        report.notes.append(report.nothing_to_do + ": returned unchanged.")
        return report
    if result.chains:
        report.notes.append(f"{result.chains} decomposed LayerNorm chain(s) kept in FP32")
    if result.clamped:
        report.notes.append(f"clamped {len(result.clamped)} out-of-range constant(s) to the FP16 range (--clamp)")
    calib = result.calibration
    if calib:
        report.notes.append(
            f"calibration: {calib['images']} image(s), {calib['tensors_checked']} tensors checked, "
            f"{len(calib['out_of_range'])} out of the FP16 range"
        )
    report.modified = True
    per_op: dict[str, Counter[str]] = defaultdict(Counter)
    for name, op in result.nodes.items():
        per_op[op]["fp32" if name in result.fp32 else "fp16"] += 1
    for op in sorted(per_op, key=lambda o: (-per_op[o]["fp32"], o)):
        c = per_op[op]
        report.rows.append({"op": op, "nodes": c["fp16"] + c["fp32"], "fp16": c["fp16"], "fp32": c["fp32"]})
    for name, reasons in result.fp32.items():
        report.skip(name, "kept FP32: " + "; ".join(reasons))
    report.notes.append(
        f"size {result.bytes_before / 1e6:.2f} MB -> {result.bytes_after / 1e6:.2f} MB; {len(result.fp32)} of "
        f"{len(result.nodes)} nodes kept FP32; {result.folded} FP32->FP16->FP32 cast round trip(s) removed; I/O "
        f"{'FP16' if config.fp16_io else 'FP32'}"
    )
    report.extra = {
        "fp32_nodes": dict(result.fp32),
        "clamped_constants": result.clamped,
        "out_of_range_constants": result.out_of_range,
        "calibration": calib,
        "bytes_before": result.bytes_before,
        "bytes_after": result.bytes_after,
        "fp16_io": config.fp16_io,
    }
    return report


def convert_fp16(
    model: onnx.ModelProto,
    config: FP16Config | None = None,
    calib: Iterable[dict[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, PassReport]:
    """Return a mixed-precision copy of ``model`` and the report (``model`` is not changed): :func:`run_fp16` and
    :func:`describe`.

    ``calib`` (input feeds, e.g. from :func:`models.calib.calibration_feeds`) enables the activation-range check.

    Raises:
        PassError: a ``--keep-fp32`` entry matches nothing, calibration was asked for with no feed, or the
            converted model fails the ONNX checks.
    """
    result = run_fp16(model, config, calib)
    return result.model, describe(result, config)


# ----------------------------------------------------------------------------------------------------------- CLI


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    unknown = [op for op in args.allow_fp16 if op not in DEFAULT_FP32_OPS]
    if unknown:
        raise PassError(f"--allow-fp16 {unknown}: not on the default FP32 list {list(DEFAULT_FP32_OPS[:6])}...")
    if args.calib_count < 1:
        raise PassError(f"--calib-count must be at least 1, got {args.calib_count}")
    if args.calib_margin <= 0:
        raise PassError(f"--calib-margin must be positive, got {args.calib_margin}")
    config = FP16Config(
        fp16_io=args.fp16_io,
        fp32_ops=tuple(op for op in DEFAULT_FP32_OPS if op not in set(args.allow_fp16)),
        keep_fp32=tuple(args.keep_fp32),
        layernorm_chains=not args.no_layernorm_chains,
        clamp=args.clamp,
        calib_margin=args.calib_margin,
    )
    if not args.calib or already_fp16(model):
        return convert_fp16(model, config)
    from models.calib import calibration_feeds

    with calibration_feeds(
        model, args.calib, split=args.calib_split, count=args.calib_count, progress=not args.no_progress
    ) as feeds:
        return convert_fp16(model, config, feeds)


@cli_main("python -m passes.fp16")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 0 success, 1 model or data unusable, 2 usage error)."""
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
