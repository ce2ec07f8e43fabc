"""Benchmark of ``passes.low_rank``: parameters, FLOPs, ORT CPU latency and output error at several rank ratios.

``python bench/bench_low_rank.py [--models mobilevit_xxs mobilevit_s] [--size 256] [--ratios 0.5 0.25]
[--min-saving 0.1] [--runs 30 --warmup 3 --threads 1] [--out-dir artifacts/bench_low_rank]``

For each model: export it (random init, seeded and perturbed like the tests, legacy exporter, opset 17), factor it
with ``passes.low_rank --rank-ratio R`` for each ratio, then time the unfactored file and every factored one with
:func:`runtime.bench.benchmark` (onnxruntime CPU provider, each model in its own process, runs interleaved round robin
so a change of the machine's load hits every model alike). Per model: wall-clock latency (median, min) and the
process CPU time per run (median), their paired ratios to the unfactored model (median over rounds of run / base run
of the same round), parameters and FLOPs from the graph, and the output error against the unfactored model on
``--inputs`` seeded N(0, 1) images: max abs and relative L2 of the logits, and the share of pixels whose argmax
class agrees. Writes ``bench_low_rank.json`` and ``bench_low_rank.md`` into ``--out-dir``.

Random weights: latency, FLOPs and parameters depend only on the shapes; the output error does depend on the values,
and random (perturbed) weights have flat singular-value spectra, so the error here is a pessimistic bound: a
trained weight keeps more energy at the same rank.
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


def _outputs(path: Path, size: int, n: int) -> list[Any]:
    import numpy as np

    from fileformat.session import SessionConfig, load_session

    sess = load_session(path, SessionConfig(spinning=True))
    gen = np.random.default_rng(1234)
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: gen.standard_normal((1, 3, size, size)).astype(np.float32)})[0] for _ in range(n)]


def _error(ref: list[Any], got: list[Any]) -> dict[str, float]:
    import numpy as np

    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    rel = max(float(np.linalg.norm(a - b) / np.linalg.norm(a)) for a, b in zip(ref, got))
    agree = float(np.mean([np.mean(a.argmax(1) == b.argmax(1)) for a, b in zip(ref, got)]))
    return {"max_abs": max_abs, "rel_l2": rel, "pixel_agreement": agree}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from fileformat.io import save_model
    from passes.low_rank import LowRankConfig, low_rank
    from runtime.bench import BenchConfig, benchmark

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = BenchConfig(runs=args.runs, warmup=args.warmup, threads=args.threads, providers=("cpu",))
    doc: dict[str, Any] = {
        "size": args.size,
        "ratios": args.ratios,
        "min_saving": args.min_saving,
        "bench_config": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads},
        "models": {},
    }
    for name in args.models:
        base = out_dir / f"{name}_{args.size}.onnx"
        if not base.exists() or args.fresh:
            logging.info("exported %s in %.1fs", base, export_perturbed(name, args.size, base, args.seed))
        model = onnx.load(str(base))
        paths, info = [base], []
        for ratio in args.ratios:
            start = time.perf_counter()
            out, report = low_rank(model, LowRankConfig(rank_ratio=ratio, min_saving=args.min_saving))
            path = out_dir / f"{name}_{args.size}_r{ratio:g}.onnx"
            save_model(out, path)
            paths.append(path)
            applied = [r for r in report.rows if r["applied"]]
            info.append(
                {
                    "ratio": ratio,
                    "seconds": round(time.perf_counter() - start, 2),
                    "layers_factored": len(applied),
                    "layers_considered": len(report.rows),
                    "max_weight_rel_error": max((r["rel_error"] for r in applied), default=0.0),
                }
            )
        ref = _outputs(base, args.size, args.inputs)
        errors = [None] + [_error(ref, _outputs(p, args.size, args.inputs)) for p in paths[1:]]
        result = benchmark(paths, cfg)
        rows = []
        for k, (m, err) in enumerate(zip(result["models"], errors)):
            r = m["ratios"]
            rows.append(
                {
                    "ratio": 1.0 if k == 0 else args.ratios[k - 1],
                    "params": m["params"],
                    "params_ratio": r["params"],
                    "flops": m["flops"],
                    "flops_ratio": r["flops"],
                    "latency_median_ms": m["latency_ms"]["median"],
                    "latency_min_ms": m["latency_ms"]["min"],
                    "cpu_median_ms": m["cpu_ms"]["median"],
                    "latency_paired": r.get("latency_paired") if k else 1.0,
                    "cpu_paired": r.get("cpu_paired") if k else 1.0,
                    "error": err,
                    **({"factoring": info[k - 1]} if k else {}),
                }
            )
        doc["models"][name] = {"rows": rows, "bench": result}
    return doc


def table(doc: dict[str, Any]) -> str:
    cfg = doc["bench_config"]
    lines = [
        f"input {doc['size']}x{doc['size']}, onnxruntime CPU, {cfg['threads']} thread(s), {cfg['runs']} interleaved "
        f"runs; passes.low_rank --rank-ratio R --min-saving {doc['min_saving']:g}; ratios to the unfactored model "
        "(latency and CPU: paired medians); random perturbed weights",
        "",
        "| model | rank ratio | layers factored | params (M) | params | GFLOPs | FLOPs | latency ms (median / min) | "
        "latency | CPU ms | CPU | logits max abs | logits rel L2 | argmax agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in doc["models"].items():
        for r in entry["rows"]:
            err = r["error"]
            fac = r.get("factoring")
            layers = "-" if fac is None else f"{fac['layers_factored']}/{fac['layers_considered']}"
            lines.append(
                f"| {name} | {'none' if fac is None else format(r['ratio'], 'g')} | {layers} | "
                f"{r['params'] / 1e6:.3f} | {r['params_ratio']:.3f}x | {r['flops'] / 1e9:.3f} | "
                f"{r['flops_ratio']:.3f}x | {r['latency_median_ms']:.2f} / {r['latency_min_ms']:.2f} | "
                f"{_x(r['latency_paired'])} | {r['cpu_median_ms']:.2f} | {_x(r['cpu_paired'])} | "
                + (
                    "- | - | - |"
                    if err is None
                    else f"{err['max_abs']:.3g} | {err['rel_l2']:.3f} | {err['pixel_agreement']:.1%} |"
                )
            )
    return "\n".join(lines)


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}x"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilevit_xxs", "mobilevit_s"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.25])
    p.add_argument("--min-saving", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--inputs", type=int, default=4, help="seeded images for the output error")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="re-export even if the unfactored file exists")
    p.add_argument("--out-dir", default=str(ROOT / "artifacts" / "bench_low_rank"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(ROOT))
    doc = run(args)
    out_dir = Path(args.out_dir)
    (out_dir / "bench_low_rank.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = table(doc)
    (out_dir / "bench_low_rank.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
