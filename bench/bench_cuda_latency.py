"""GPU latency of exported (and compressed) models, without TensorRT: onnxruntime's CUDA provider where the
installed onnxruntime has it, and the torch model rebuilt from each file (``models.prune_torch``) on CUDA in fp32
and under fp16 autocast.

``python bench/bench_cuda_latency.py a.onnx b.onnx ... [--runs 100] [--batch 1] [--json out.json]``

Models are timed interleaved (round robin, as ``runtime.bench`` does), with CUDA events around each call after a
warm-up; the table gives the median milliseconds per batch and the ratio to the first model. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timers(paths: list[Path], batch: int) -> dict[str, list[Any]]:
    """Per variant (``ort_cuda``, ``torch_fp32``, ``torch_fp16``): one zero-argument timed call per model."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from fileformat.session import SessionConfig, load_session
    from models.onnx_weights import student_from_onnx

    cpu = SessionConfig(spinning=True, log_severity=None)  # onnxruntime's defaults, as a user's session
    cuda = SessionConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"), spinning=True, log_severity=None)

    out: dict[str, list[Any]] = {"torch_fp32": [], "torch_fp16": []}
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if has_cuda_ep:
        out["ort_cuda"] = []
    for path in paths:
        model, _, _ = student_from_onnx(path)
        model = model.cuda().eval()
        size = int(model.config.input_size) if model.config.family == "swin" else None
        sess = load_session(path, cpu)
        shape = [batch, *[int(d) for d in sess.get_inputs()[0].shape[1:]]]
        if size is not None:
            shape[-2:] = [size, size]
        x = torch.randn(*shape, device="cuda")

        def run_torch(model: Any = model, x: Any = x, half: bool = False) -> None:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                model(x)

        out["torch_fp32"].append(run_torch)
        out["torch_fp16"].append(lambda f=run_torch: f(half=True))
        if has_cuda_ep:
            cuda_sess = load_session(path, cuda)
            feed = {cuda_sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
            out["ort_cuda"].append(lambda s=cuda_sess, f=feed: s.run(None, f))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 1
    timers = _timers(args.models, args.batch)
    results: dict[str, list[float]] = {}
    for variant, calls in timers.items():
        for _ in range(args.warmup):
            for call in calls:
                call()
        times: list[list[float]] = [[] for _ in calls]
        for _ in range(args.runs):
            for i, call in enumerate(calls):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times[i].append(start.elapsed_time(end))
        results[variant] = [statistics.median(t) for t in times]
    doc = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "batch": args.batch,
        "runs": args.runs,
        "models": [{"path": str(m), **{v: results[v][i] for v in results}} for i, m in enumerate(args.models)],
    }
    head = f"{'model':40s}" + "".join(f"{v + ' ms':>14s}{'x':>7s}" for v in results)
    print(f"{doc['device']}, torch {doc['torch']}, onnxruntime {doc['onnxruntime']}, batch {args.batch}")
    print(head)
    for i, m in enumerate(args.models):
        cells = "".join(f"{results[v][i]:14.3f}{results[v][i] / results[v][0]:7.3f}" for v in results)
        print(f"{m.name[:40]:40s}{cells}")
    if "ort_cuda" not in results:
        print("(onnxruntime has no CUDA provider here: torch timings only)")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
