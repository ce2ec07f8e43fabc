"""Benchmark of ``passes.compress``: a FLOPs budget against a latency budget at equal targets.

``python bench/bench_compress.py [--models paper mobilevit_s_upernet512] [--size 512] [--targets 0.5 0.35 0.2]
[--runs 20 --warmup 3 --threads 2] [--out-dir artifacts/bench_compress]``

For each model: export it (random init, seeded and perturbed like the tests, legacy exporter, opset 17); for each
target ``t`` compress it twice with ``passes.compress`` (all unit kinds: head channels, heads, neurons, transformer
widths, conv channels): ``--target-flops t`` (LAMP) and ``--target-latency t`` (HALP over a latency table measured
by onnxruntime's profiler on this machine). Then every file of the model is timed in ONE interleaved run of
:func:`runtime.bench.benchmark` (round robin, each model in its own process), which reports wall time and the
process CPU time; the ratios are paired per round, so they hold on a loaded machine. Output agreement: argmax
pixel agreement of the logits with the unpruned model on random images (random weights: a sanity check, not an
accuracy figure). Writes ``bench_compress.json`` and ``bench_compress.md`` into ``--out-dir``.

Goals (issue: compression that buys latency): ``paper`` at ``--target-latency 0.35`` at most 0.35x measured (within
10% of the prediction), and at most 0.2x at 0.2. This takes minutes at 512x512 on 2 cores: a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, export_perturbed


def _agreement(base: Any, other: Any, size: int, images: int = 2) -> float:
    import numpy as np

    from fileformat.session import SessionConfig, load_session

    def run(model: Any, x: np.ndarray) -> np.ndarray:
        sess = load_session(model, SessionConfig(spinning=True, log_severity=None))
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    rng = np.random.default_rng(0)
    agree = []
    for _ in range(images):
        x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        agree.append(float((run(base, x).argmax(1) == run(other, x).argmax(1)).mean()))
    return sum(agree) / len(agree)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from fileformat.errors import PassError
    from fileformat.io import save_model
    from passes.compress import CompressConfig, compress
    from runtime.bench import BenchConfig, benchmark

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "size": args.size,
        "targets": args.targets,
        "threads": args.threads,
        "floor": args.floor,
        "models": {},
    }
    for name in args.models:
        base = out_dir / f"{name}_{args.size}.onnx"
        if not base.exists() or args.fresh:
            logging.info("exported %s in %.1fs", base, export_perturbed(name, args.size, base, args.seed))
        model = onnx.load(str(base))
        paths, rows = [base], [{"budget": "none", "target": 1.0}]
        table_path = out_dir / f"{name}_{args.size}.latency.json"
        for target in args.targets:
            for budget in ("flops", "latency"):
                config = CompressConfig(threads=args.threads, latency_table=str(table_path), floor=args.floor)
                setattr(config, f"target_{budget}", target)
                start = time.perf_counter()
                row: dict[str, Any] = {"budget": budget, "target": target}
                try:
                    pruned, report = compress(model, config)
                except PassError as exc:  # an unreachable latency target is an answer too
                    rows.append({**row, "error": str(exc)})
                    logging.warning("%s %s %g: %s", name, budget, target, exc)
                    continue
                row["seconds"] = round(time.perf_counter() - start, 1)
                row["estimate"] = report.extra["budget"]["estimated"]
                # the loop's attempts: the table's prediction of each plan and compress's measurement of it
                row["attempts"] = report.extra.get("latency_attempts", [])
                row["agreement"] = _agreement(model, pruned, args.size)
                path = out_dir / f"{name}_{args.size}_{budget}{target:g}.onnx"
                save_model(pruned, path)
                paths.append(path)
                rows.append(row)
                logging.info("%s %s %g: %s in %.1fs", name, budget, target, report.extra["budget"], row["seconds"])
        cfg = BenchConfig(runs=args.runs, warmup=args.warmup, threads=args.threads, providers=("cpu",))
        result = benchmark(paths, cfg)
        timed = iter(result["models"])
        for row in rows:
            if "error" in row:
                continue
            m = next(timed)
            r = m["ratios"]
            row.update(
                wall_ms=m["latency_ms"]["median"],
                cpu_ms=m["cpu_ms"]["median"],
                wall_ratio=r.get("latency_paired") or r["latency"],
                cpu_ratio=r.get("cpu_paired") or r["cpu"],
                flops=m["flops"],
                flops_ratio=r["flops"],
                params=m["params"],
                params_ratio=r["params"],
            )
        doc["models"][name] = {"rows": rows, "bench": result}
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"input {doc['size']}x{doc['size']}, onnxruntime CPU, {doc['threads']} threads, floor {doc.get('floor', 0.1)}, "
        "models timed interleaved; "
        "ratios to the unpruned model (paired per round), CPU = process CPU time",
        "",
        "| model | budget | target | wall ms | wall | CPU | predicted | FLOPs | params (M) | params | agreement | "
        "attempts: predicted / measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in doc["models"].items():
        for r in entry["rows"]:
            if "error" in r:
                lines.append(f"| {name} | {r['budget']} | {r['target']:g} | not reachable: {r['error'][:80]} |||||||||")
                continue
            pred = f"{r['estimate']:.3f}x" if r["budget"] == "latency" else ""
            agree = f"{r['agreement']:.1%}" if "agreement" in r else ""
            tries = ", ".join(f"{a['predicted']:.3f}/{a['measured']:.3f}" for a in r.get("attempts", []))
            lines.append(
                f"| {name} | {r['budget']} | {r['target']:g} | {r['wall_ms']:.1f} | {r['wall_ratio']:.3f}x | "
                f"{r['cpu_ratio']:.3f}x | {pred} | {r['flops_ratio']:.3f}x | {r['params'] / 1e6:.2f} | "
                f"{r['params_ratio']:.3f}x | {agree} | {tries} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["paper", "mobilevit_s_upernet512"], help="registry names")
    p.add_argument("--size", type=int, default=512, help="input size (default 512)")
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.35, 0.2], help="fractions kept")
    p.add_argument("--runs", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.add_argument("--floor", type=float, default=0.1, help="per-layer minimum kept fraction (default 0.1)")
    p.add_argument("--fresh", action="store_true", help="re-export even if the unpruned file exists")
    p.add_argument("--out-dir", default=str(ROOT / "artifacts" / "bench_compress"), help="where files go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(ROOT))
    doc = run(args)
    out_dir = Path(args.out_dir)
    from fileformat.io import atomic_write_text

    atomic_write_text(out_dir / "bench_compress.json", json.dumps(doc, indent=2) + "\n")
    text = table(doc)
    atomic_write_text(out_dir / "bench_compress.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
