"""Device profiles: what each deployment target can run, and how fast it could be.

The exporter reads ``opset`` and ``fused_attention`` from here (``--target``); ``passes.check_target`` checks a
model against the rest. Figures: Jetson Nano from NVIDIA's module data sheet (472 GFLOPS FP16, 25.6 GB/s, 4 GB
shared; the LPCV 2023 rules allowed a 2 GB model), JetPack 4.6 ships TensorRT 8.2 and cannot be upgraded; Orin
Nano 8 GB from its data sheet (JetPack 5/6, TensorRT 8.5 or later, INT8 tensor cores).

The Orin profile names TensorRT 8.6 (JetPack 6): its export keeps ``LayerNormalization`` (opset 17), which TensorRT's
ONNX parser only imports from 8.6 on (onnx-tensorrt changelog, "8.6 EA: added GroupNormalization,
LayerNormalization"); on JetPack 5 (TensorRT 8.5) export with opset 13 as for the Nano.

``workspace_mb`` is the builder workspace the bundle asks for (modest on the Nano, whose engine build can run out of
its 4 GB shared memory). ``compute_efficiency`` / ``memory_efficiency`` are ASSUMED fractions of the peak FLOP rate and
bandwidth that a small segmentation network reaches at batch 1; they only feed the labelled latency estimate of
``passes.check_target`` and were not measured (no device here).
"""

from __future__ import annotations

from dataclasses import dataclass

from fileformat.errors import UsageError


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target."""

    name: str
    runtime: str  # "tensorrt" or "onnxruntime"
    tensorrt: str | None  # TensorRT version on the device
    max_opset: int  # highest default-domain opset its parser takes
    export_opset: int  # what the exporter uses for it
    fp16: bool
    int8: bool  # INT8 gives a speed-up there
    memory_budget_mb: int  # what a model (weights + activations + workspace) may use
    peak_gflops: float  # FP16 peak (FP32 for CPUs); the latency estimate divides FLOPs by it
    mem_bandwidth_gbs: float
    fused_attention: bool  # whether the export may keep a fused attention op / LayerNormalization
    description: str = ""
    workspace_mb: int = 1024  # TensorRT builder workspace limit (trtexec --workspace / --memPoolSize=workspace:)
    compute_efficiency: float = 0.25  # assumed fraction of peak_gflops reached (latency estimate only)
    memory_efficiency: float = 0.6  # assumed fraction of mem_bandwidth_gbs reached (latency estimate only)
    python: str | None = None  # Python version on the device: the bundle's scripts are written for it
    layernorm: bool = True  # its runtime has ONNX's LayerNormalization op (opset 17): passes.optimize may fuse


TARGETS: dict[str, TargetProfile] = {
    t.name: t
    for t in (
        TargetProfile(
            "jetson-nano",
            "tensorrt",
            "8.2",
            13,
            13,
            fp16=True,
            int8=False,
            memory_budget_mb=2048,
            peak_gflops=472.0,
            mem_bandwidth_gbs=25.6,
            fused_attention=False,
            description="Jetson Nano 4 GB, JetPack 4.6, TensorRT 8.2 (no LayerNormalization op, no INT8 cores)",
            workspace_mb=512,
            python="3.6",
            layernorm=False,
        ),
        TargetProfile(
            "jetson-orin",
            "tensorrt",
            "8.6",
            17,
            17,
            fp16=True,
            int8=True,
            memory_budget_mb=4096,
            peak_gflops=20000.0,
            mem_bandwidth_gbs=68.0,
            fused_attention=True,
            description="Jetson Orin Nano 8 GB, JetPack 6, TensorRT 8.6+ (opset 17 + LayerNormalization, FP16, INT8)",
            workspace_mb=2048,
            python="3.10",
        ),
        TargetProfile(
            "cpu",
            "onnxruntime",
            None,
            21,
            17,
            fp16=False,
            int8=True,
            memory_budget_mb=8192,
            peak_gflops=100.0,
            mem_bandwidth_gbs=20.0,
            fused_attention=True,
            description="x86 CPU with onnxruntime (INT8 QDQ preferred; FP16 runs slower without FP16 units)",
            workspace_mb=0,
            python=None,
        ),
    )
}


class UnknownTargetError(UsageError, KeyError):
    """A target name that is not in :data:`TARGETS` (a usage error; a ``KeyError`` too)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_target(name: str) -> TargetProfile:
    """The profile called ``name``; :class:`UnknownTargetError` (a ``KeyError``) lists the known ones."""
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def resolve_target(name: str) -> TargetProfile:
    """The profile called ``name``; a unique suffix after a dash also names it (``orin`` -> ``jetson-orin``).
    :class:`UnknownTargetError` (a usage error) lists the known ones."""
    if name in TARGETS:
        return get_target(name)
    hits = [t for t in TARGETS if t.endswith("-" + name)]
    if len(hits) == 1:
        return get_target(hits[0])
    return get_target(name)
