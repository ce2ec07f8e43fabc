"""The round trip of a plan: a pruned ONNX file rebuilt in torch (:func:`models.onnx_weights.student_from_onnx`),
re-exported with the file's exporter, opset and attention form, and compared with the file: parameter counts, the
shape of every weight initializer per torch tensor, and onnxruntime outputs (``python -m models.prune_torch``)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporters.export import ExportError, ExportOptions, export_torch_model
from fileformat.metadata import read_metadata, weight_sources
from fileformat.params import count_params
from fileformat.session import SessionConfig, load_session
from models.onnx_weights import load_pruned, student_from_onnx
from models.torch_plan import PlanError, probe_size

log = logging.getLogger(__name__)

__all__ = ["RoundTripReport", "check_roundtrip"]


@dataclass
class RoundTripReport:
    """Comparison of a pruned ONNX file with the re-export of its rebuilt torch model."""

    source: str
    params_onnx: int
    params_rebuilt: int
    params_torch: int
    shape_mismatches: list[str]
    max_abs_error: float
    tolerance: float
    heads: int
    neurons: int
    channels: int
    sliced_tensors: int
    low_rank: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.params_onnx == self.params_rebuilt
            and not self.shape_mismatches
            and self.max_abs_error <= self.tolerance
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        lines = [
            f"round-trip of {self.source}: {'OK' if self.ok else 'MISMATCH'}",
            f"  plan: {self.heads} attention blocks, {self.neurons} MLPs, {self.channels} conv units, "
            f"{self.sliced_tensors} tensors cut" + (f", {self.low_rank} low-rank layers" if self.low_rank else ""),
            f"  parameters: ONNX {self.params_onnx}, rebuilt export {self.params_rebuilt}, torch {self.params_torch}",
            "  initializer shapes: "
            + ("all equal" if not self.shape_mismatches else "; ".join(self.shape_mismatches[:5])),
            f"  outputs: max abs {self.max_abs_error:.3g} (tolerance {self.tolerance:g})",
        ]
        return "\n".join(lines)


def _torch_shapes(proto: onnx.ModelProto, weight_map: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{torch tensor: shape in torch layout}`` of the weight initializers of ``proto`` that hold one torch tensor
    (through its weight map; one stored for several equal tensors, such as zero biases, names none of them)."""
    out: dict[str, tuple[int, ...]] = {}
    for init in proto.graph.initializer:
        sources = weight_sources(weight_map.get(init.name))
        if len(sources) == 1:
            shape = tuple(int(d) for d in init.dims)
            out[str(sources[0]["param"])] = shape[::-1] if sources[0].get("transposed") else shape
    return out


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = load_session(proto, SessionConfig(threads=1, spinning=True))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_roundtrip(onnx_path: str | Path, *, tolerance: float = 1e-4, seed: int = 0) -> RoundTripReport:
    """Rebuild ``onnx_path`` in torch, re-export it with the same options and compare the two ONNX files.

    Compared: parameter counts (``fileformat.params.count_params``), the shape of every weight initializer per
    torch tensor name, and the onnxruntime outputs on two seeded inputs (max abs). Raises :class:`PlanError` when
    the file cannot be rebuilt; a rebuilt model that differs gives a report with ``ok`` false.
    """
    src = load_pruned(onnx_path)
    model, plan, meta = student_from_onnx(onnx_path)
    size = int((meta.get("input_size") or [probe_size(model.config)])[0])
    opts = ExportOptions(
        model=model.config.name,
        input_size=size,
        opset=int(meta.get("opset", 17)),
        exporter=str(meta.get("exporter", "legacy")),
        fused_attn=meta.get("fused_attn"),
        target=meta.get("target"),
        tolerance=max(tolerance, 1e-4),
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
        out = Path(tmp) / "rebuilt.onnx"
        try:
            export_torch_model(model, out, opts, extra_metadata={"plan": plan})
        except ExportError as exc:
            raise PlanError(f"the rebuilt model does not export: {exc}") from exc
        rebuilt = onnx.load(str(out))
    shapes_src = _torch_shapes(src, meta["weight_map"])
    shapes_new = _torch_shapes(rebuilt, read_metadata(rebuilt)["weight_map"])
    # tensors both files name unambiguously (completeness is load_onnx_weights' check)
    mismatches = [
        f"{k}: {list(shapes_src[k])} vs {list(shapes_new[k])}"
        for k in sorted(set(shapes_src) & set(shapes_new))
        if shapes_src[k] != shapes_new[k]
    ]
    gen = np.random.default_rng(seed)
    err = 0.0
    for _ in range(2):
        x = gen.standard_normal((1, 3, size, size)).astype(np.float32)
        err = max(err, float(np.abs(_run(src, x) - _run(rebuilt, x)).max()))
    report = RoundTripReport(
        source=str(onnx_path),
        # counted once per reader: how the exporter merged equal tensors is storage, not structure
        params_onnx=count_params(src),
        params_rebuilt=count_params(rebuilt),
        params_torch=sum(p.numel() for p in model.parameters()),
        shape_mismatches=mismatches,
        max_abs_error=err,
        tolerance=tolerance,
        heads=len(plan["heads"]),
        neurons=len(plan["neurons"]),
        channels=len(plan["channels"]),
        sliced_tensors=len(plan["slices"]),
        low_rank=len(plan.get("low_rank") or {}),
    )
    log.info("%s", report.format())
    return report
