"""Benchmark of the precision passes: FP32 vs FP16 vs INT8 of a trained small student, in one run.

``python bench/bench_precision.py --size 512 --steps 300 --out artifacts/bench_precision.json``

1. data: a synthetic LPCV-layout set (``--data`` to use another; every number on synthetic data says so);
2. train mobilevit_xxs + UPerNet (``models.train``, ``--steps`` steps of ``--crop`` crops), or load ``--weights``;
3. export it at ``--size`` (legacy exporter, ``--opset``), run ``passes.fp16`` and ``passes.int8`` (calibrated on
   ``--calib-count`` training images);
4. for each file: size on disk, onnxruntime CPU latency (median of ``--runs`` runs after a warm-up, ``--threads``
   threads, batch 1), and through ``runtime.parity`` the mIoU against the ground truth and the pixel agreement with
   FP32 on the validation split, with the parity verdict (FP16: agreement >= 99.5 %; INT8: mIoU drop <= 0.5 points).

Prints a table and writes JSON. On a CPU without native FP16 arithmetic, onnxruntime runs an FP16 model *slower*
than FP32: it has few FP16 CPU kernels, so it inserts Cast nodes around most ops and computes them in FP32. FP16
files are for GPUs (Jetson, TensorRT); the note printed with the table says what was measured here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.export import ExportOptions, export_torch_model  # noqa: E402
from fileformat.io import save_model  # noqa: E402
from models.calib import image_feeds, input_spec, list_images  # noqa: E402
from passes.fp16 import convert_fp16  # noqa: E402
from passes.int8 import quantize_int8  # noqa: E402
from runtime.parity import ParityConfig, compare_models  # noqa: E402

log = logging.getLogger("bench_precision")

WHY_FP16_SLOW = (
    "onnxruntime's CPU provider has few FP16 kernels, so it wraps most FP16 ops in Cast nodes and computes them in "
    "FP32 (and this CPU has no native FP16 arithmetic); FP16 files pay on GPUs (Jetson/TensorRT), not here."
)


def fp16_note(fp32_ms: float, fp16_ms: float) -> str:
    """What the measured FP16 CPU latency means, stated from the numbers."""
    ratio = fp16_ms / fp32_ms
    if ratio > 1.05:
        return f"FP16 is {ratio:.2f}x SLOWER than FP32 on this CPU: {WHY_FP16_SLOW}"
    return (
        f"FP16 ran at {ratio:.2f}x the FP32 latency on this CPU (within noise or faster at this size); in general "
        + WHY_FP16_SLOW
    )


def latency_ms(path: Path, runs: int, threads: int) -> float:
    """Median wall time (ms) of one onnxruntime CPU inference of a 1 x 3 x H x W input, after one warm-up."""
    from fileformat.session import SessionConfig, load_session

    session = load_session(path, SessionConfig(threads=threads, inter_threads=1, spinning=True))
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape]).astype(dtype)
    session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def train_student(args: argparse.Namespace, data: Path, work: Path) -> tuple[Any, dict[str, Any]]:
    """The trained student (``--weights`` or a short ``models.train`` run) and what was done."""
    import torch

    from models.registry import build_model

    model = build_model(args.model)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state))
        return model.eval(), {"weights": args.weights}
    from models.train import TrainConfig, train

    config = TrainConfig(
        model=args.model,
        data=str(data),
        out=str(work / "train"),
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        checkpoint_every=0,
        log_every=max(1, args.steps // 10),
        seed=0,
        eval_split=None,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    result = train(config, model=model)
    return model.eval(), {
        "steps": result.step,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "seconds": time.perf_counter() - t0,
        "final_loss": result.history[-1]["loss"] if result.history else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilevit_xxs")
    p.add_argument("--size", type=int, default=512, help="export / evaluation input size")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--data", type=Path, help="LPCV-layout data (default: a synthetic set rendered here)")
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--weights", help="trained state dict / checkpoint instead of training here")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--calib-count", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the models here (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    tmp = tempfile.TemporaryDirectory(prefix="bench-precision-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from models.synthetic import generate

        data = work / "synthetic"
        if not data.is_dir():
            log.info("rendering %d + %d synthetic images at %d", args.n_train, args.n_val, args.size)
            generate(data, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=0)
    synthetic = (data / "SYNTHETIC.json").is_file()

    student, training = train_student(args, data, work)
    paths = {"fp32": work / f"{args.model}_{args.size}_fp32.onnx"}
    export_torch_model(student, paths["fp32"], ExportOptions(model=args.model, input_size=args.size, opset=args.opset))
    fp32 = onnx.load(str(paths["fp32"]))

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fp16, fp16_report = convert_fp16(fp32)
    timings["fp16_pass_s"] = time.perf_counter() - t0
    paths["fp16"] = save_model(fp16, work / f"{args.model}_{args.size}_fp16.onnx")
    t0 = time.perf_counter()
    feeds = image_feeds(list_images(data, "train"), input_spec(fp32), count=args.calib_count, progress=False)
    int8, int8_report = quantize_int8(fp32, feeds)
    timings["int8_pass_s"] = time.perf_counter() - t0
    paths["int8"] = save_model(int8, work / f"{args.model}_{args.size}_int8.onnx")

    rows: list[dict[str, Any]] = []
    for name, path in paths.items():
        log.info("measuring %s", name)
        row: dict[str, Any] = {
            "precision": name,
            "file_mb": path.stat().st_size / 1e6,
            "latency_ms": latency_ms(path, args.runs, args.threads),
        }
        check = {"fp32": "agreement", "fp16": "agreement", "int8": "miou"}[name]
        res = compare_models(paths["fp32"], path, data, ParityConfig(check=check, progress=False, save_count=0))
        row.update(
            miou=res.miou_candidate,
            miou_drop=res.miou_drop_points,
            agreement=res.agreement,
            logits_max_abs=res.outputs["logits"]["max_abs"],
            verdict="PASS" if res.passed else "FAIL",
            images=res.images,
        )
        rows.append(row)

    lines = [
        f"{args.model} at {args.size}x{args.size}, opset {args.opset}, onnxruntime CPU, {args.threads} threads, "
        f"batch 1, median of {args.runs}" + ("  ** SYNTHETIC DATA **" if synthetic else ""),
        f"{'precision':<10}{'file MB':>9}{'latency ms':>12}{'mIoU %':>9}{'drop pt':>9}{'agree %':>9}"
        f"{'max|dlogit|':>13}{'verdict':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r['precision']:<10}{r['file_mb']:>9.2f}{r['latency_ms']:>12.1f}{r['miou'] or 0:>9.2f}"
            f"{r['miou_drop'] or 0:>9.2f}{r['agreement']:>9.3f}{r['logits_max_abs']:>13.4g}{r['verdict']:>9}"
        )
    note = fp16_note(rows[0]["latency_ms"], rows[1]["latency_ms"])
    lines.append(note)
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "model": args.model,
            "size": args.size,
            "opset": args.opset,
            "data": {"root": str(data), "synthetic": synthetic, "val_images": rows[0]["images"]},
            "training": training,
            "rows": rows,
            "pass_seconds": timings,
            "fp16_fp32_nodes": len(fp16_report.extra["fp32_nodes"]),
            "int8_quantized_nodes": len(int8_report.extra["quantized_nodes"]),
            "note": note,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads},
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
