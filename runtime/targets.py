"""Device profiles: what each deployment target can run, and how fast it could be.

The exporter reads ``opset`` and ``fused_attention`` from here (``--target``); ``passes.check_target`` checks a
model against the rest. Figures: Jetson Nano from NVIDIA's module data sheet (472 GFLOPS FP16, 25.6 GB/s, 4 GB
shared; the LPCV 2023 rules allowed a 2 GB model), JetPack 4.6 ships TensorRT 8.2 and cannot be upgraded; Orin
Nano 8 GB from its data sheet (JetPack 5/6, TensorRT 8.5 or later, INT8 tensor cores).
"""

from __future__ import annotations

from dataclasses import dataclass


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
        ),
        TargetProfile(
            "jetson-orin",
            "tensorrt",
            "8.5",
            17,
            17,
            fp16=True,
            int8=True,
            memory_budget_mb=4096,
            peak_gflops=20000.0,
            mem_bandwidth_gbs=68.0,
            fused_attention=True,
            description="Jetson Orin Nano 8 GB, JetPack 5/6, TensorRT 8.5+ (opset 17, FP16 and INT8)",
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
        ),
    )
}


class UnknownTargetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_target(name: str) -> TargetProfile:
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]
