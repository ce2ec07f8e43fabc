"""Benchmark of head pruning: pass time, and onnxruntime CPU latency before/after removing half the heads.

``python bench/bench_prune_heads.py --models mobilevit_s swin_t_upernet512 --size 512 --runs 5 --out bench.json``

For each model: export (legacy exporter, opset 17, weights perturbed from their init as in the tests, because a
fresh init has equal zero biases that the exporter merges into one shared tensor), time ``prune_heads`` (ratio 0.5,
in memory: load and save excluded), then time ``--runs`` onnxruntime CPU inferences of each model after one warm-up
(median). Prints a table and writes JSON. FLOPs are counted from the graphs' static shapes.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.export import ExportOptions, export_torch_model  # noqa: E402
from fileformat.params import count_params  # noqa: E402
from models.registry import build_model, get_config  # noqa: E402
from passes._core.graph import GraphView  # noqa: E402
from passes.prune_heads import PruneHeadsConfig, prune_heads  # noqa: E402

log = logging.getLogger("bench_prune_heads")


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Seeded noise on every parameter and float buffer (positive 1-D tensors stay positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            noise = torch.randn(t.shape, generator=gen) * scale
            if t.ndim == 1 and t.numel() and (t > 0).all():
                t.mul_(1 + noise.abs())
            else:
                t.add_(noise)
    return model


def latency_ms(model: onnx.ModelProto, runs: int, threads: int) -> float:
    """Median wall time of one onnxruntime CPU inference, after one warm-up run."""
    from fileformat.session import SessionConfig, load_session

    sess = load_session(model, SessionConfig(threads=threads, spinning=True))
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
    sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_one(name: str, size: int, runs: int, threads: int, workdir: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {"input_size": size} if get_config(name).family == "swin" else {}
    torch.manual_seed(0)
    net = perturb_(build_model(name, **overrides), 0)
    path = workdir / f"{name}_{size}.onnx"
    t0 = time.perf_counter()
    # the exporter's torch-vs-onnxruntime check at 512 with perturbed weights is ~4e-4 (logits of magnitude ~10):
    # relaxed here, this benchmark times the pass and the runtime, not export parity
    opts = ExportOptions(model=name, input_size=size, opset=17, exporter="legacy", tolerance=1e-2)
    export_torch_model(net, path, opts)
    export_s = time.perf_counter() - t0
    model = onnx.load(str(path))
    t0 = time.perf_counter()
    pruned, report = prune_heads(model, PruneHeadsConfig(ratio=0.5))
    pass_s = time.perf_counter() - t0
    heads = sum(r["heads"] for r in report.rows)
    heads_after = sum(r["heads_after"] for r in report.rows)
    attn_flops = sum(r["flops"] for r in report.rows)
    before_ms = latency_ms(model, runs, threads)
    after_ms = latency_ms(pruned, runs, threads)
    return {
        "model": name,
        "size": size,
        "blocks": len(report.rows),
        "skipped": len(report.skipped),
        "heads": heads,
        "heads_after": heads_after,
        "params": count_params(model),
        "params_after": count_params(pruned),
        "flops": GraphView(model).flops(),
        "flops_after": GraphView(pruned).flops(),
        "attention_flops_share": attn_flops / max(1, report.flops_before),
        "export_s": round(export_s, 2),
        "pass_s": round(pass_s, 3),
        "latency_ms": round(before_ms, 1),
        "latency_after_ms": round(after_ms, 1),
        "speedup": round(before_ms / after_ms, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilevit_s", "swin_t_upernet512"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=5, help="timed inferences per model (median reported)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--out", default="bench_prune_heads.json", help="JSON output path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_one(name, args.size, args.runs, args.threads, Path(tmp)))
            r = rows[-1]
            print(
                f"{r['model']:<20} {r['size']}px  heads {r['heads']}->{r['heads_after']}  "
                f"params {r['params'] / 1e6:.2f}M->{r['params_after'] / 1e6:.2f}M  "
                f"FLOPs {r['flops'] / 1e9:.1f}G->{r['flops_after'] / 1e9:.1f}G  pass {r['pass_s']:.2f}s  "
                f"ORT {r['latency_ms']:.0f}->{r['latency_after_ms']:.0f} ms (x{r['speedup']:.2f})",
                flush=True,
            )
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "threads": args.threads,
        "runs": args.runs,
        "ratio": 0.5,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
