"""Benchmark of ``passes.compress``: ORT CPU latency, FLOPs and parameters at several FLOP targets.

``python bench/bench_compress.py [--models paper mobilevit_s_upernet512] [--size 512] [--targets 1.0 0.5 0.25 0.1]
[--runs 5 --warmup 1 --threads 2] [--out-dir artifacts/bench_compress]``

For each model: export it (random init, seeded and perturbed like the tests, legacy exporter, opset 17), compress
it to each FLOPs target with ``passes.compress`` (heads, neurons and conv channels, LAMP, floor 0.1), then time
every file with :func:`runtime.bench.benchmark` (onnxruntime, CPU provider; each model in its own process) and print
one table with the ratios to the unpruned model. The latency ratio uses the fastest of ``--runs`` runs (the least
disturbed by other processes on a shared machine); the median is shown beside it. The acceptance line of issue 5:
at target 0.25, latency at most 0.35x the unpruned model. Writes ``bench_compress.json`` and ``bench_compress.md``
into ``--out-dir``.

Random weights: latency, FLOPs and parameters do not depend on the values, only on the shapes the budget chose
(LAMP ranks by magnitude, so a trained model may get a different but equally sized allocation). This takes minutes
at 512x512 on a 2-core machine: it is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _export(model: str, size: int, path: Path, seed: int) -> float:
    import torch

    from exporters.export import ExportOptions, export_torch_model
    from models.registry import build_model

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import perturb_  # the tests' seeded perturbation: no two weights equal

    start = time.perf_counter()
    torch.manual_seed(seed)
    net = perturb_(build_model(model), seed)
    export_torch_model(net, path, ExportOptions(model=model, input_size=size, opset=17, exporter="legacy", seed=seed))
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from fileformat.io import save_model
    from passes.compress import CompressConfig, compress
    from runtime.bench import BenchConfig, benchmark

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"size": args.size, "targets": args.targets, "allocation": args.allocation, "models": {}}
    for name in args.models:
        base = out_dir / f"{name}_{args.size}.onnx"
        if not base.exists() or args.fresh:
            secs = _export(name, args.size, base, args.seed)
            logging.info("exported %s in %.1fs", base, secs)
        model = onnx.load(str(base))
        paths = [base]
        compress_info = []
        for target in args.targets:
            if target >= 1.0:
                continue
            start = time.perf_counter()
            pruned, report = compress(model, CompressConfig(target_flops=target, allocation=args.allocation))
            secs = time.perf_counter() - start
            path = out_dir / f"{name}_{args.size}_t{target:g}.onnx"
            save_model(pruned, path)
            paths.append(path)
            compress_info.append({"target": target, "seconds": round(secs, 1), "budget": report.extra.get("budget")})
            logging.info("%s target %g: %s in %.1fs", name, target, report.extra.get("budget"), secs)
        cfg = BenchConfig(runs=args.runs, warmup=args.warmup, threads=args.threads, providers=("cpu",))
        result = benchmark(paths, cfg)
        rows = []
        targets = [1.0] + [t for t in args.targets if t < 1.0]
        base_min = result["models"][0]["latency_ms"]["min"]
        for target, m in zip(targets, result["models"]):
            rows.append(
                {
                    "target": target,
                    "latency_ms": m["latency_ms"]["min"],
                    "latency_ratio": m["latency_ms"]["min"] / base_min,
                    "latency_median_ms": m["latency_ms"]["median"],
                    "latency_median_ratio": m["ratios"]["latency"],
                    "flops": m["flops"],
                    "flops_ratio": m["ratios"]["flops"],
                    "params": m["params"],
                    "params_ratio": m["ratios"]["params"],
                }
            )
        doc["models"][name] = {"rows": rows, "compress": compress_info, "bench": result}
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"input {doc['size']}x{doc['size']}, onnxruntime CPU, passes.compress --allocation "
        f"{doc.get('allocation', 'lamp')}; ratios to the unpruned model",
        "",
        "| model | target FLOPs | latency ms (min) | latency | median ms | FLOPs (G) | FLOPs | params (M) | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in doc["models"].items():
        for r in entry["rows"]:
            lines.append(
                f"| {name} | {r['target']:g} | {r['latency_ms']:.1f} | {r['latency_ratio']:.3f}x | "
                f"{r['latency_median_ms']:.1f} | "
                f"{r['flops'] / 1e9:.2f} | {r['flops_ratio']:.3f}x | "
                f"{r['params'] / 1e6:.2f} | {r['params_ratio']:.3f}x |"
            )
        at = next((r for r in entry["rows"] if abs(r["target"] - 0.25) < 1e-9), None)
        if at is not None:
            verdict = "met" if at["latency_ratio"] <= 0.35 else "NOT met"
            lines.append(f"| {name} | goal: latency <= 0.35x at 0.25 | {verdict} ({at['latency_ratio']:.3f}x) ||||||")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["paper", "mobilevit_s_upernet512"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--targets", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.1])
    p.add_argument("--allocation", choices=("lamp", "uniform"), default="lamp")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="re-export even if the unpruned file exists")
    p.add_argument("--out-dir", default=str(ROOT / "artifacts" / "bench_compress"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(ROOT))
    doc = run(args)
    out_dir = Path(args.out_dir)
    (out_dir / "bench_compress.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = table(doc)
    (out_dir / "bench_compress.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
