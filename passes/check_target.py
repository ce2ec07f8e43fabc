"""Can a device run this model? ``python -m passes.check_target model.onnx --target jetson-nano [--json r.json]``.

Checks an ONNX file against a device profile (``fileformat.targets``) and lists every reason the device cannot run it:

* **operators** a TensorRT target's ONNX parser does not import (tables below), ops from non-standard domains;
* **opset** above what the target's parser takes;
* **attributes and inputs** the parser restricts (the "Restrictions" column of onnx-tensorrt's table: constant
  ``axes`` of Slice/Squeeze/Unsqueeze, constant Conv weights, 2D/3D pooling, Resize modes, zero QDQ zero points,
  constant TopK ``K``, Einsum without ellipsis, MaxPool without its ``Indices`` output);
* **tensor types** the target lacks (bfloat16/FP8/INT4/strings on TensorRT 8.x, UINT8 inside the network, DOUBLE
  cast down with clamping) and **INT8** on a device without INT8 units (a warning: it builds but gains nothing);
* **dynamic shapes**: a dynamic batch is built at a fixed shape (``trtexec --shapes``, a warning); any other dynamic
  dimension needs optimisation profiles the bundle does not write (an error: export with a static input size);
* **memory**: weights (as built: FP32 weights become FP16 on a target built with ``--fp16``), an upper bound of the
  activations (every intermediate tensor at once, no reuse) and the builder workspace, against the device budget;
* an **ESTIMATE** of the device latency (never a measurement), a roofline::

      t_compute = FLOPs / (peak_gflops * 1e9 * compute_efficiency)
      t_memory  = (weight bytes + 2 * activation bytes) / (mem_bandwidth_gbs * 1e9 * memory_efficiency)
      t_estimate = max(t_compute, t_memory)

  FLOPs are ``passes._core.stats.graph_stats`` (2 per multiply-accumulate of MatMul/Gemm/Conv); activations are
  read once and written once. The efficiency factors are assumptions stored in the target profile (0.25 and 0.6 by
  default), not measurements.

Exit 0 when the model is compatible (warnings allowed), 1 when it is not (the list says why and what to do) or the
file cannot be read, 2 on a usage error (unknown target included).

Operator tables. Source: onnx-tensorrt ``docs/operators.md`` ("Operator Support Matrix", rows marked Y). The
TensorRT 8.4 table (release/8.4-GA, "TensorRT 8.4 supports operators up to Opset 13") was read; the 8.2-GA file was
not available here, so the 8.2 set is the 8.4 set minus what onnx-tensorrt's ``docs/Changelog.md`` says 8.4 added
(``Xor``; ``Shrink`` is marked N in the 8.4 table). The 8.5 set is the 8.5 table (release/8.5-GA, opset 17); 8.6
adds ``GroupNormalization``, ``LayerNormalization`` and ``IsInf`` (Changelog, "TensorRT 8.6 EA").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fileformat.args import Parser, positive_int
from fileformat.cli import cli_main
from fileformat.targets import TARGETS, TargetProfile, get_target
from passes._parser import parse_early


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m passes.check_target",
        description="Check an ONNX model against a device profile; exit 1 with the list of problems if it cannot run.",
    )
    p.add_argument("model", help="ONNX model to check (not modified)")
    p.add_argument("--target", required=True, choices=sorted(TARGETS), help="device profile (runtime/targets.py)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch a dynamic batch is built for (default 1)")
    p.add_argument("--json", help="also write the result as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks on errors")
    return p


parse_early(__name__, _parser)  # --help and argument errors answer before onnx loads

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fileformat.errors import PassError
from fileformat.io import atomic_write_text, check_distinct, load_model
from passes._core.stats import graph_stats

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- operator tables

_TRT84_SUPPORTED = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
    Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
    Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
    NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
    Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
    """.split()
)
_TRT85_ADDED = frozenset(
    """
    GridSample HardSwish MeanVarianceNormalization Mod NonZero OneHot RandomNormal RandomNormalLike Reciprocal
    RoiAlign Shrink Trilu
    """.split()
)

#: ONNX operators (default domain) each TensorRT version's parser imports.
TRT_SUPPORTED_OPS: dict[str, frozenset[str]] = {
    "8.2": _TRT84_SUPPORTED - {"Xor"},
    "8.4": _TRT84_SUPPORTED,
    "8.5": _TRT84_SUPPORTED | _TRT85_ADDED,
    "8.6": _TRT84_SUPPORTED | _TRT85_ADDED | {"GroupNormalization", "LayerNormalization", "IsInf"},
}
#: the highest default-domain opset each table was written for.
TRT_MAX_OPSET = {"8.2": 13, "8.4": 13, "8.5": 17, "8.6": 17}

_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}

# Hints for the ops our models are known to produce.
_OP_HINTS = {
    "LayerNormalization": "TensorRT imports LayerNormalization only from 8.6 on; re-export for the device with "
    "`python -m exporters.export --target jetson-nano` (opset 13, LayerNorm decomposed into primitive ops)",
    "Attention": "the opset-23 fused Attention op; export with opset <= 17 and --no-fused-attn",
    "Reciprocal": "TensorRT before 8.5 has no Reciprocal; rewrite 1/x as Div(1, x)",
    "Gelu": "the opset-20 Gelu op; export with opset <= 17 (Gelu is then decomposed into Erf, Mul, Add)",
    "HardSwish": "HardSwish arrived in TensorRT 8.5; export with opset 13 (HardSigmoid + Mul)",
}

_TYPE_NAMES = {v: k for k, v in TensorProto.DataType.items()}


# ------------------------------------------------------------------------------------------------- the result


@dataclass
class Finding:
    """One reason (``error``), risk (``warning``) or fact (``info``) about running the model on the target."""

    severity: str  # "error" | "warning" | "info"
    code: str  # stable machine-readable kind, e.g. "unsupported-op", "opset", "dynamic-shape"
    message: str
    nodes: list[str] = field(default_factory=list)  # the nodes (or tensors) concerned, all of them


@dataclass
class CheckConfig:
    """Options of the check. ``batch`` is the batch a dynamic batch dimension is built for."""

    batch: int = 1
    max_listed: int = 5  # node names shown per finding in the table (the JSON has all)


@dataclass
class TargetCheck:
    """Outcome of :func:`check_target`; ``compatible`` is ``True`` when there is no error."""

    target: str
    description: str
    model: str
    opset: int
    findings: list[Finding] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def compatible(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compatible"] = self.compatible
        d["schema_version"] = 1
        return d

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def format(self, max_listed: int = 5) -> str:
        """Human-readable verdict, findings (errors first), memory and the labelled latency estimate."""
        verdict = "COMPATIBLE" if self.compatible else "NOT COMPATIBLE"
        lines = [f"{self.model} on {self.target} ({self.description}): {verdict}"]
        order = {"error": 0, "warning": 1, "info": 2}
        for f in sorted(self.findings, key=lambda f: order.get(f.severity, 3)):
            where = ""
            if f.nodes:
                shown = ", ".join(f.nodes[:max_listed])
                more = f", ... {len(f.nodes) - max_listed} more" if len(f.nodes) > max_listed else ""
                where = f" [{len(f.nodes)}: {shown}{more}]"
            lines.append(f"  {f.severity.upper():7s} {f.code}: {f.message}{where}")
        if self.memory:
            m = self.memory
            lines.append(
                f"  memory: weights {m['weights_mb']:.1f} MB ({m['weights_precision']}) + activations <= "
                f"{m['activations_mb']:.1f} MB + workspace {m['workspace_mb']} MB = {m['total_mb']:.1f} MB "
                f"of {m['budget_mb']} MB"
            )
        if self.estimate:
            e = self.estimate
            lines.append(
                f"  ESTIMATE (not measured): {e['latency_ms']:.2f} ms/image ({e['fps']:.1f} FPS) at batch "
                f"{e['batch']}, {e['bound']}-bound; {e['formula']}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ graph helpers


class _Graph:
    """Index of a model: producers, consumers, constants (initializers, Constant outputs, Identity/Cast/
    DequantizeLinear of those)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.graph_inputs = {i.name for i in g.input} - set(self.inits)

    def is_constant(self, name: str, depth: int = 0) -> bool:
        if name in self.inits:
            return True
        node = self.producer.get(name)
        if node is None or depth > 8:
            return False
        if node.op_type == "Constant":
            return True
        # DequantizeLinear of an INT8 initializer is how QDQ models carry quantised weights; TensorRT folds it.
        return node.op_type in ("Identity", "Cast", "DequantizeLinear") and self.is_constant(node.input[0], depth + 1)

    def constant_value(self, name: str, depth: int = 0) -> np.ndarray | None:
        if name in self.inits:
            try:
                return numpy_helper.to_array(self.inits[name])
            except Exception:  # noqa: BLE001 - an odd or truncated tensor: treat as unknown
                return None
        node = self.producer.get(name)
        if node is None or depth > 8:
            return None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
            return None
        if node.op_type == "Identity":
            return self.constant_value(node.input[0], depth + 1)
        return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _decode(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _node_name(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise PassError("the model imports no default-domain opset; it is not a standard ONNX model.")


def _trt_table(version: str) -> tuple[str, frozenset[str]]:
    """The operator table for a TensorRT version string ("8.2", "8.5.2", "10.0"...): the newest table not above it."""
    want = tuple(int(x) for x in version.split(".")[:2])
    known = sorted(TRT_SUPPORTED_OPS, key=lambda v: tuple(int(x) for x in v.split(".")))
    usable = [v for v in known if tuple(int(x) for x in v.split(".")) <= want]
    key = usable[-1] if usable else known[0]
    return key, TRT_SUPPORTED_OPS[key]


# ----------------------------------------------------------------------------------------------------- checks


def _check_ops(model: onnx.ModelProto, g: _Graph, target: TargetProfile) -> list[Finding]:
    out: list[Finding] = []
    unsupported: dict[str, list[str]] = defaultdict(list)
    foreign: dict[str, list[str]] = defaultdict(list)
    table_key, table = _trt_table(target.tensorrt or "8.6")
    for i, node in enumerate(model.graph.node):
        name = _node_name(node, i)
        if node.domain not in ("", "ai.onnx"):
            foreign[f"{node.domain}::{node.op_type}"].append(name)
        elif node.op_type not in table:
            unsupported[node.op_type].append(name)
    for op, names in sorted(unsupported.items()):
        hint = _OP_HINTS.get(op, "replace it with supported ops before export, or write a TensorRT plugin")
        out.append(
            Finding(
                "error",
                "unsupported-op",
                f"{op} is not imported by TensorRT {target.tensorrt}'s ONNX parser (onnx-tensorrt operators.md, "
                f"TensorRT {table_key} table): {hint}",
                names,
            )
        )
    for op, names in sorted(foreign.items()):
        out.append(
            Finding(
                "error",
                "custom-domain",
                f"{op} is not a standard ONNX op; TensorRT needs a plugin for it. Models written by onnxruntime's "
                "optimiser (com.microsoft fused ops) are for onnxruntime only: deploy the unoptimised file",
                names,
            )
        )
    return out


#: a node's violations of onnx-tensorrt's "Restrictions" column, one message each
Restriction = Callable[[onnx.NodeProto, _Graph, int], Iterator[str]]


def _conv_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    op = node.op_type
    if len(node.input) > 1 and not g.is_constant(node.input[1]):
        yield f"{op}: the weights W must be an initializer (TensorRT 8.x)"
    w = g.constant_value(node.input[1]) if len(node.input) > 1 else None
    if w is not None and w.ndim not in (4, 5):
        yield f"{op}: only 2D or 3D convolutions are supported"


def _pool_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    op = node.op_type
    if len(_attr(node, "kernel_shape", [])) not in (2, 3):
        yield f"{op}: only 2D or 3D pooling is supported"
    if op == "MaxPool" and len(node.output) > 1 and node.output[1] and g.consumers.get(node.output[1]):
        yield "MaxPool: the Indices output is not supported"


def _axes_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    op = node.op_type
    if opset < (10 if op == "Slice" else 13):  # axes became an input at these opsets
        return
    axes_idx = 3 if op == "Slice" else 1
    if len(node.input) > axes_idx and node.input[axes_idx] and not g.is_constant(node.input[axes_idx]):
        yield f"{op}: `axes` must be a constant (initializer)"


def _resize_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    mode = _decode(_attr(node, "mode", b"nearest"))
    coord = _decode(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
    nearest = _decode(_attr(node, "nearest_mode", b"round_prefer_floor"))
    if mode not in _RESIZE_MODES:
        yield f"Resize: mode {mode!r} is not supported (nearest, linear only)"
    if coord not in _RESIZE_COORD:
        yield f"Resize: coordinate_transformation_mode {coord!r} is not supported"
    if mode == "nearest" and nearest not in _RESIZE_NEAREST:
        yield f"Resize: nearest_mode {nearest!r} is not supported"


def _qdq_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    if len(node.input) > 2 and node.input[2]:
        zp = g.constant_value(node.input[2])
        if zp is None or np.any(zp != 0):
            yield f"{node.op_type}: the zero point must be a constant 0 (symmetric quantisation)"


def _constant_input_restriction(message: str) -> Restriction:
    """The rule of an op whose second input must be an initializer."""

    def rule(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
        if len(node.input) > 1 and not g.is_constant(node.input[1]):
            yield message

    return rule


def _einsum_restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    if "..." in _decode(_attr(node, "equation", b"")):
        yield "Einsum: ellipsis is not supported"


#: the restriction rule of each default-domain op that has one
RESTRICTIONS: dict[str, Restriction] = {
    "Conv": _conv_restrictions,
    "ConvTranspose": _conv_restrictions,
    "AveragePool": _pool_restrictions,
    "MaxPool": _pool_restrictions,
    "LpPool": _pool_restrictions,
    "Slice": _axes_restrictions,
    "Squeeze": _axes_restrictions,
    "Unsqueeze": _axes_restrictions,
    "Resize": _resize_restrictions,
    "QuantizeLinear": _qdq_restrictions,
    "DequantizeLinear": _qdq_restrictions,
    "TopK": _constant_input_restriction("TopK: K must be an initializer (TensorRT < 8.6)"),
    "CumSum": _constant_input_restriction("CumSum: `axis` must be an initializer"),
    "Einsum": _einsum_restrictions,
}


def _check_restrictions(model: onnx.ModelProto, g: _Graph, opset: int) -> list[Finding]:
    """The onnx-tensorrt "Restrictions" column for the ops it supports (:data:`RESTRICTIONS`): one error per
    message, naming every node it holds for."""
    problems: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(model.graph.node):
        rule = RESTRICTIONS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        for message in rule(node, g, opset) if rule else ():
            problems[message].append(_node_name(node, i))
    return [Finding("error", "restriction", msg, names) for msg, names in problems.items()]


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _trt_type_findings(by_type: dict[int, list[str]], io_names: set[str], target: TargetProfile) -> list[Finding]:
    """Tensor types a TensorRT target's parser refuses or casts down."""
    out: list[Finding] = []
    trt_version = tuple(int(x) for x in (target.tensorrt or "0").split(".")[:2])
    for t in (TensorProto.BFLOAT16, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        if by_type.get(t) and not (t == TensorProto.BFLOAT16 and trt_version >= (9, 0)):
            message = f"tensors of type {_TYPE_NAMES[t]} are not supported by TensorRT {target.tensorrt}"
            out.append(Finding("error", "dtype", message, by_type[t]))
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4", "UINT4"):
        t = getattr(TensorProto, name, None)
        if t is not None and by_type.get(t):
            out.append(Finding("error", "dtype", f"{name} tensors need TensorRT 9/10", by_type[t]))
    if by_type.get(TensorProto.DOUBLE):
        message = "DOUBLE tensors: TensorRT casts them down to FP32, clamping to +-FLT_MAX"
        out.append(Finding("warning", "dtype", message, by_type[TensorProto.DOUBLE]))
    inner = [n for n in by_type.get(TensorProto.UINT8, []) if n not in io_names or trt_version < (8, 5)]
    if inner:
        message = (
            "UINT8 tensors: TensorRT 8.x has no UINT8 inside a network (8.5+ accepts it only as network "
            "input/output); quantise symmetrically to INT8 (QDQ with zero point 0)"
        )
        out.append(Finding("error", "dtype", message, inner))
    return out


def _int8_findings(model: onnx.ModelProto, by_type: dict[int, list[str]], target: TargetProfile) -> list[Finding]:
    """An INT8 (QDQ) model on a target without INT8 units, or an FP model where INT8 would be faster."""
    qdq = [
        _node_name(n, i) for i, n in enumerate(model.graph.node) if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    int8 = list(by_type.get(TensorProto.INT8, []))
    if (qdq or int8) and not target.int8:
        message = (
            f"the model is INT8-quantised (QDQ) but {target.name} has no INT8 units: INT8 gives no speed-up "
            "there (TensorRT must also be built with --int8 for QDQ); deploy the FP16/FP32 model instead"
        )
        return [Finding("warning", "int8-no-speedup", message, qdq or int8)]
    if qdq or int8:
        return [Finding("info", "int8", f"explicitly quantised (QDQ) model: {target.name} runs INT8", qdq or int8)]
    if target.runtime == "onnxruntime" and target.int8:
        message = f"{target.name} prefers INT8 (onnxruntime QDQ usually runs faster on CPUs): consider the INT8 pass"
        return [Finding("info", "int8-preferred", message)]
    return []


def _check_types(model: onnx.ModelProto, inferred: onnx.ModelProto, g: _Graph, target: TargetProfile) -> list[Finding]:
    """Tensor types the target lacks, INT8 without INT8 units, FP16 without FP16 units."""
    by_type: dict[int, list[str]] = defaultdict(list)
    for name, t in _tensor_types(inferred).items():
        by_type[t].append(name)
    io_names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    out = _trt_type_findings(by_type, io_names, target) if target.runtime == "tensorrt" else []
    out += _int8_findings(model, by_type, target)
    fp16 = by_type.get(TensorProto.FLOAT16, [])
    if fp16 and not target.fp16:
        message = (
            f"FP16 tensors on {target.name}: without FP16 units onnxruntime inserts casts and runs slower; deploy "
            "the FP32 (or INT8) model there"
        )
        out.append(Finding("warning", "fp16-slow", message, fp16[:50]))
    return out


def _check_shapes(model: onnx.ModelProto, target: TargetProfile, batch: int) -> list[Finding]:
    out: list[Finding] = []
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            label = d.dim_param or "?"
            if axis == 0:
                sev = "warning" if target.runtime == "tensorrt" else "info"
                msg = (
                    f"input {inp.name!r} has a dynamic batch ({label}): the engine is built for batch {batch} "
                    "(trtexec --shapes; the bundle writes it)"
                    if target.runtime == "tensorrt"
                    else f"input {inp.name!r} has a dynamic batch ({label})"
                )
                out.append(Finding(sev, "dynamic-batch", msg, [inp.name]))
            elif target.runtime == "tensorrt":
                out.append(
                    Finding(
                        "error",
                        "dynamic-shape",
                        f"input {inp.name!r} axis {axis} is dynamic ({label}): TensorRT needs an optimisation "
                        "profile (min/opt/max shapes) for every dynamic dimension other than the batch, which the "
                        "bundle does not write; export with a static input size (--input-size)",
                        [inp.name],
                    )
                )
    return out


def _elem_bytes(t: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)).itemsize)
    except Exception:  # noqa: BLE001 - types numpy cannot hold (strings, 4-bit)
        return 1


def _memory_and_estimate(
    model: onnx.ModelProto, inferred: onnx.ModelProto, target: TargetProfile, batch: int
) -> tuple[dict[str, Any], dict[str, Any], list[Finding]]:
    """Weights and activation bytes as the target holds them, the budget check and the roofline estimate."""
    built_fp16 = target.fp16 and target.runtime == "tensorrt"

    def deployed_bytes(t: int, n: int) -> int:
        if built_fp16 and t in (TensorProto.FLOAT, TensorProto.DOUBLE):
            return 2 * n
        return _elem_bytes(t) * n

    weights = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        weights += deployed_bytes(init.data_type, n)
    activations = 0
    inits = {i.name for i in model.graph.initializer}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if vi.name in inits or not tt.HasField("shape") or tt.elem_type in (TensorProto.INT64, TensorProto.BOOL):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in tt.shape.dim]
        activations += deployed_bytes(tt.elem_type, int(np.prod(dims)) if dims else 1)
    mb = 1024.0 * 1024.0
    total = weights + activations + target.workspace_mb * mb
    memory = {
        "weights_mb": weights / mb,
        "weights_precision": "fp16 (built with --fp16)" if built_fp16 else "as stored",
        "activations_mb": activations / mb,
        "activations_note": "upper bound: every intermediate tensor at once, no memory reuse",
        "workspace_mb": target.workspace_mb,
        "total_mb": total / mb,
        "budget_mb": target.memory_budget_mb,
    }
    findings: list[Finding] = []
    if weights / mb > target.memory_budget_mb:
        findings.append(
            Finding(
                "error",
                "memory",
                f"weights alone take {weights / mb:.0f} MB, over {target.name}'s {target.memory_budget_mb} MB budget: "
                "prune or quantise further",
            )
        )
    elif total / mb > target.memory_budget_mb:
        findings.append(
            Finding(
                "warning",
                "memory",
                f"weights + activations (upper bound) + workspace = {total / mb:.0f} MB exceed the "
                f"{target.memory_budget_mb} MB budget; lower the workspace or the input size if the build fails",
            )
        )
    stats = graph_stats(model)
    flops = stats.flops * batch
    peak = target.peak_gflops * 1e9 * target.compute_efficiency
    bw = target.mem_bandwidth_gbs * 1e9 * target.memory_efficiency
    t_compute = flops / peak if peak else float("inf")
    moved = weights + 2 * activations
    t_memory = moved / bw if bw else float("inf")
    t = max(t_compute, t_memory)
    estimate = {
        "label": "ESTIMATE from FLOPs and the device's peak, not a measurement",
        "batch": batch,
        "flops": flops,
        "params": stats.params,
        "bytes_moved": moved,
        "compute_ms": 1e3 * t_compute,
        "memory_ms": 1e3 * t_memory,
        "latency_ms": 1e3 * t,
        "fps": batch / t if t else float("inf"),
        "bound": "compute" if t_compute >= t_memory else "memory",
        "peak_gflops": target.peak_gflops,
        "compute_efficiency": target.compute_efficiency,
        "mem_bandwidth_gbs": target.mem_bandwidth_gbs,
        "memory_efficiency": target.memory_efficiency,
        "formula": (
            f"max(FLOPs / ({target.peak_gflops:g} GFLOPS x {target.compute_efficiency:g}), "
            f"bytes / ({target.mem_bandwidth_gbs:g} GB/s x {target.memory_efficiency:g}))"
        ),
    }
    return memory, estimate, findings


# ------------------------------------------------------------------------------------------------------ API


def check_target(
    model: onnx.ModelProto,
    target: str | TargetProfile,
    config: CheckConfig | None = None,
    *,
    name: str = "model",
) -> TargetCheck:
    """Check ``model`` against ``target`` (a profile or its name); the model is not modified.

    Raises :class:`fileformat.targets.UnknownTargetError` for an unknown target name.
    """
    cfg = config or CheckConfig()
    profile = get_target(target) if isinstance(target, str) else target
    opset = default_opset(model)
    g = _Graph(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - a model inference rejects still gets the other checks
        log.warning("shape inference failed (%s); type and memory checks see only declared tensors", exc)
        inferred = model
    result = TargetCheck(profile.name, profile.description, name, opset)
    f = result.findings
    if opset > profile.max_opset:
        f.append(
            Finding(
                "error",
                "opset",
                f"default-domain opset {opset} > {profile.max_opset}, the highest "
                f"{'TensorRT ' + str(profile.tensorrt) if profile.tensorrt else profile.runtime} takes: re-export "
                f"with `python -m exporters.export --target {profile.name}` (opset {profile.export_opset})",
            )
        )
    if profile.runtime == "tensorrt":
        f.extend(_check_ops(model, g, profile))
        f.extend(_check_restrictions(model, g, opset))
    else:
        f.extend(_check_onnxruntime(model))
    f.extend(_check_types(model, inferred, g, profile))
    f.extend(_check_shapes(model, profile, cfg.batch))
    memory, estimate, mem_findings = _memory_and_estimate(model, inferred, profile, cfg.batch)
    f.extend(mem_findings)
    result.memory = memory
    result.estimate = estimate
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if (
        profile.runtime == "tensorrt"
        and profile.fp16
        and not quantized
        and not any(t == TensorProto.FLOAT16 for t in _tensor_types(model).values())
    ):
        f.append(Finding("info", "fp16", "FP32 model: build the engine with --fp16 (the bundle does)"))
    elif profile.runtime == "tensorrt" and quantized:
        f.append(Finding("info", "int8", "INT8 (QDQ) model: build the engine with --int8 (and --fp16 for the rest)"))
    return result


def _check_onnxruntime(model: onnx.ModelProto) -> list[Finding]:
    """For onnxruntime targets: can this onnxruntime build a session (ops, opset, types)?"""
    import onnxruntime as ort

    from fileformat.session import SessionConfig, load_session

    try:
        load_session(model, SessionConfig(optimization="disable", spinning=True))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        return [Finding("error", "onnxruntime", f"onnxruntime {ort.__version__} cannot load the model: {exc}")]
    return []


# ------------------------------------------------------------------------------------------------------ CLI


@cli_main("python -m passes.check_target")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 compatible, 1 incompatible or unreadable, 2 usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    check_distinct([args.model], [("--json", args.json)])
    model = load_model(args.model)
    result = check_target(model, args.target, CheckConfig(batch=args.batch), name=Path(args.model).name)
    if args.json:
        if not Path(args.json).parent.is_dir():
            raise PassError(f"--json {args.json}: directory {Path(args.json).parent} does not exist")
        result.write_json(args.json)
    print(result.format())
    return 0 if result.compatible else 1


if __name__ == "__main__":
    sys.exit(main())
