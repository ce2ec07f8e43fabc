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
import fnmatch
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fileformat.args import positive, positive_int
from fileformat.cli import cli_main
from passes._parser import make_parser, parse_early


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
    p.add_argument(
        "--calib",
        metavar="DATA",
        help="images to measure activation ranges on: LPCV-layout root, image folder, or 'synthetic'",
    )
    p.add_argument("--calib-count", type=positive_int, default=16, help="calibration images (default 16)")
    p.add_argument("--calib-split", default="train", help="split of an LPCV-layout root (default train)")
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
from fileformat.metadata import append_history, read_metadata
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.graph import consumers as _consumers
from passes._core.report import PassReport
from passes._core.stats import graph_stats

__all__ = [
    "DEFAULT_FP32_OPS",
    "FP16_MAX",
    "FP16_TINY",
    "FP16Config",
    "activation_ranges",
    "already_fp16",
    "convert_fp16",
    "find_layernorm_chains",
    "fold_cast_roundtrips",
    "main",
    "match_nodes",
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
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


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


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name ``<op>_<index>`` in place (blocking works by node name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float constants by tensor name: initializers and ``Constant`` node outputs (external data must be loaded)."""
    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                out[node.output[0]] = np.asarray(attr.f, np.float32)
            elif attr.name == "value_floats":
                out[node.output[0]] = np.asarray(list(attr.floats), np.float32)
    return out


def _const_alias(model: onnx.ModelProto) -> dict[str, str]:
    """``Identity`` outputs that alias a constant (the legacy exporter's merged initializers) -> the constant."""
    consts = _constant_arrays(model)
    alias: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            alias[node.output[0]] = node.input[0]
    return alias


def match_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> dict[str, list[str]]:
    """``{pattern: [node names]}``: a pattern matches an op type exactly, or node names exactly or as a glob."""
    out: dict[str, list[str]] = {}
    for pat in patterns:
        hits = [
            n.name for n in model.graph.node if n.op_type == pat or n.name == pat or fnmatch.fnmatchcase(n.name, pat)
        ]
        out[pat] = hits
    return out


def already_fp16(model: onnx.ModelProto) -> str | None:
    """Why ``model`` counts as already converted (float16 weights, I/O or a recorded fp16 pass), else None."""
    history = read_metadata(model).get("history") or []
    if any(isinstance(h, dict) and h.get("pass") == "fp16" for h in history):
        return "its vitseg.history records an fp16 pass"
    n16 = sum(1 for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16)
    n16 += sum(
        1
        for n in model.graph.node
        if n.op_type == "Constant"
        and any(a.name == "value" and a.t.data_type == TensorProto.FLOAT16 for a in n.attribute)
    )
    if n16:
        return f"it holds {n16} float16 weights/constants"
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            return f"its {'input' if vi in model.graph.input else 'output'} {vi.name!r} is float16"
    return None


def find_layernorm_chains(model: onnx.ModelProto) -> list[list[str]]:
    """Node names of each decomposed LayerNorm: ``ReduceMean -> Sub -> Pow|Mul -> ReduceMean [-> Add] -> Sqrt ->
    Div [-> Mul(gamma)] [-> Add(beta)]`` (also ``Reciprocal -> Mul`` in place of ``Div``).

    Matched on the data flow: ``Sub`` reads the first ``ReduceMean``'s input and output, the square reads the
    ``Sub`` output twice (or with exponent 2), the division's numerator is that same ``Sub`` output. The affine
    ``Mul``/``Add`` are included when their other operand is a constant.
    """
    consumers = _consumers(model)
    consts = _constant_arrays(model)
    consts.update({k: consts[v] for k, v in _const_alias(model).items()})

    def only(tensor: str, op: str) -> onnx.NodeProto | None:
        hits = [n for n in consumers.get(tensor, []) if n.op_type == op]
        return hits[0] if len(hits) == 1 else None

    def is_const(name: str) -> bool:
        return name in consts

    chains: list[list[str]] = []
    for r1 in model.graph.node:
        if r1.op_type != "ReduceMean" or not r1.input:
            continue
        x, m = r1.input[0], r1.output[0]
        subs = [n for n in consumers.get(m, []) if n.op_type == "Sub" and list(n.input) == [x, m]]
        if len(subs) != 1:
            continue
        sub = subs[0]
        d = sub.output[0]
        sq = None
        for n in consumers.get(d, []):
            if n.op_type == "Pow" and n.input[0] == d and is_const(n.input[1]) and np.all(consts[n.input[1]] == 2):
                sq = n
            elif n.op_type == "Mul" and list(n.input) == [d, d]:
                sq = n
        if sq is None:
            continue
        r2 = only(sq.output[0], "ReduceMean")
        if r2 is None:
            continue
        chain = [r1, sub, sq, r2]
        cur = r2.output[0]
        add_eps = only(cur, "Add")
        if add_eps is not None and any(is_const(i) for i in add_eps.input):
            chain.append(add_eps)
            cur = add_eps.output[0]
        sqrt = only(cur, "Sqrt")
        if sqrt is None:
            continue
        chain.append(sqrt)
        cur = sqrt.output[0]
        div = only(cur, "Div")
        if div is not None and list(div.input) == [d, cur]:
            chain.append(div)
            cur = div.output[0]
        else:
            rec = only(cur, "Reciprocal")
            mul = only(rec.output[0], "Mul") if rec is not None else None
            if rec is None or mul is None or d not in mul.input:
                continue
            chain += [rec, mul]
            cur = mul.output[0]
        for op in ("Mul", "Add"):
            nxt = consumers.get(cur, [])
            if len(nxt) == 1 and nxt[0].op_type == op and any(is_const(i) for i in nxt[0].input if i != cur):
                chain.append(nxt[0])
                cur = nxt[0].output[0]
        chains.append([n.name for n in chain])
    return chains


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


def convert_fp16(
    model: onnx.ModelProto,
    config: FP16Config | None = None,
    calib: Iterable[dict[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, PassReport]:
    """Return a mixed-precision copy of ``model`` and the report (``model`` is not changed).

    ``calib`` (input feeds, e.g. from :func:`runtime._calib.calibration_feeds`) enables the activation-range check.

    Raises:
        PassError: a ``--keep-fp32`` entry matches nothing, calibration was asked for with no feed, or the
            converted model fails the ONNX checks.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    config = config or FP16Config()
    report = PassReport("fp16", columns=["op", "nodes", "fp16", "fp32"])
    reason = already_fp16(model)
    if reason is not None:
        report.nothing_to_do = f"already FP16 ({reason}). To convert with other options, start from the FP32 model"
        report.notes.append(report.nothing_to_do + ": returned unchanged.")
        stats = graph_stats(model)
        report.params_before = report.params_after = stats.params
        report.flops_before = report.flops_after = stats.flops
        return copy.deepcopy(model), report

    work = copy.deepcopy(model)
    del work.graph.value_info[:]  # stale after any rewrite (the dynamo exporter writes them all)
    _name_nodes(work)
    decision = _Decision()
    nodes = {n.name: n for n in work.graph.node}
    consumers = _consumers(work)

    fp32_ops = set(config.fp32_ops)
    for node in work.graph.node:
        if node.op_type in fp32_ops:
            decision.keep(node.name, f"{node.op_type} is on the FP32 op list")
    if config.layernorm_chains:
        chains = find_layernorm_chains(work)
        for chain in chains:
            for name in chain:
                decision.keep(name, f"decomposed LayerNorm starting at {chain[0]}")
        if chains:
            report.notes.append(f"{len(chains)} decomposed LayerNorm chain(s) kept in FP32")
    for pat, hits in match_nodes(work, config.keep_fp32).items():
        if not hits:
            raise PassError(f"--keep-fp32 {pat!r} matches no op type or node name of the model; check the spelling.")
        for name in hits:
            decision.keep(name, f"--keep-fp32 {pat}")

    # constants that float16 cannot hold
    consts = _constant_arrays(work)
    aliases = _const_alias(work)
    bad: dict[str, str] = {}
    for name, arr in consts.items():
        why = _out_of_range(arr)
        if why is not None:
            bad[name] = why
    for alias, src in aliases.items():
        if src in bad:
            bad[alias] = bad[src]
    clamped: list[str] = []
    if bad and config.clamp:
        clamped = sorted(n for n in bad if n not in aliases)
        _clamp_constants(work, set(clamped))
        report.notes.append(f"clamped {len(clamped)} out-of-range constant(s) to the FP16 range (--clamp)")
    elif bad:
        producers = _producers(work)
        for name, why in bad.items():
            for reader in consumers.get(name, []):
                decision.keep(reader.name, f"reads constant {name} that {why}")
            if name in producers:  # the Constant / Identity node itself keeps its float32 value
                decision.keep(producers[name].name, f"constant {name} {why}")

    # activations that float16 cannot hold
    calib_info: dict[str, Any] = {}
    if calib is not None:
        ranges, count = activation_ranges(model, calib)
        if count == 0:
            raise PassError("calibration data gave no image; give a folder with images or drop --calib.")
        producers = _producers(work)
        limit = FP16_MAX / max(config.calib_margin, 1e-12)
        hot = {t: r for t, r in ranges.items() if r > limit}
        for tensor, peak in sorted(hot.items()):
            why = f"activation {tensor} reaches {peak:.4g} on the calibration images (> {limit:.6g})"
            if tensor in producers:
                decision.keep(producers[tensor].name, why)
            for reader in consumers.get(tensor, []):
                decision.keep(reader.name, why)
        calib_info = {"images": count, "tensors_checked": len(ranges), "out_of_range": hot}
        report.notes.append(
            f"calibration: {count} image(s), {len(ranges)} tensors checked, {len(hot)} out of the FP16 range"
        )

    # constants (and Identity aliases of constants) read only by float32 nodes keep their exact float32 value
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

    blocked = sorted(decision.reasons)
    converted = convert_float_to_float16(
        work,
        keep_io_types=not config.fp16_io,
        op_block_list=[],
        node_block_list=blocked,
        max_finite_val=FP16_MAX,
        min_positive_val=FP16_TINY,
    )
    folded = fold_cast_roundtrips(converted)
    del converted.graph.value_info[:]
    out = finalize(converted)
    append_history(
        out,
        {
            "pass": "fp16",
            "fp16_io": config.fp16_io,
            "fp32_nodes": len(blocked),
            "clamped": len(clamped),
            "calib_images": calib_info.get("images", 0),
        },
    )

    # report
    stats_in, stats_out = graph_stats(model), graph_stats(out)
    report.modified = True
    report.params_before, report.params_after = stats_in.params, stats_out.params
    report.flops_before, report.flops_after = stats_in.flops, stats_out.flops
    per_op: dict[str, Counter[str]] = defaultdict(Counter)
    for name, node in nodes.items():
        per_op[node.op_type]["fp32" if name in decision.reasons else "fp16"] += 1
    for op in sorted(per_op, key=lambda o: (-per_op[o]["fp32"], o)):
        c = per_op[op]
        report.rows.append({"op": op, "nodes": c["fp16"] + c["fp32"], "fp16": c["fp16"], "fp32": c["fp32"]})
    for name in blocked:
        report.skip(name, "kept FP32: " + "; ".join(decision.reasons[name]))
    bytes_in, bytes_out = model.ByteSize(), out.ByteSize()
    report.notes.append(
        f"size {bytes_in / 1e6:.2f} MB -> {bytes_out / 1e6:.2f} MB; {len(blocked)} of {len(nodes)} nodes kept FP32; "
        f"{folded} FP32->FP16->FP32 cast round trip(s) removed; I/O {'FP16' if config.fp16_io else 'FP32'}"
    )
    report.extra = {
        "fp32_nodes": {n: decision.reasons[n] for n in blocked},
        "clamped_constants": clamped,
        "out_of_range_constants": bad,
        "calibration": calib_info,
        "bytes_before": bytes_in,
        "bytes_after": bytes_out,
        "fp16_io": config.fp16_io,
    }
    return out, report


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
    from runtime._calib import CalibrationDataError, calibration_feeds

    try:
        with calibration_feeds(
            model, args.calib, split=args.calib_split, count=args.calib_count, progress=not args.no_progress
        ) as feeds:
            return convert_fp16(model, config, feeds)
    except CalibrationDataError as exc:
        raise PassError(str(exc)) from None


@cli_main("python -m passes.fp16")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 0 success, 1 model or data unusable, 2 usage error)."""
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
