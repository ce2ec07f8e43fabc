"""Side-by-side benchmark: our ONNX compression (``passes.compress``) against Torch-Pruning at equal FLOPs targets.

``python bench/bench_torch_pruning.py [--model paper] [--size 256] [--targets 0.5 0.25] [--runs 30 --warmup 5
--threads 2] [--out-dir artifacts/bench_torch_pruning]``

Needs Torch-Pruning, which is not a dependency of the project; install it without its dependencies (a plain install
pulls a second torch): ``.venv/bin/pip install --no-deps torch-pruning==1.6.1``.

1. The registry model (random init, seeded and perturbed like the tests: ``tests/conftest.py``'s ``perturb_``) is
   exported with our exporter (legacy, opset 17, fixed input size).
2. Ours, per target ``t``: ``compress(model, CompressConfig(target_flops=t))`` (all unit kinds, LAMP) and
   ``CompressConfig(target_latency=t)`` (HALP over a latency table measured on this machine by onnxruntime's
   profiler; an unreachable latency target raises ``PassError``, which is recorded as the answer).
3. Torch-Pruning 1.6.1, per target: on a copy of the same torch model, one-shot global LAMP pruning
   (``MetaPruner(importance=LAMPImportance(p=2), global_pruning=True)``) with the decoder's classifier ignored and
   timm's attention declared (``num_heads={attn.qkv: heads}``, ``prune_num_heads=False``, ``prune_head_dims=True``:
   head dimensions go, every head stays). The pruning ratio is bisected until the FLOPs ratio (torch's flop
   counter, attention matmuls included, the count ``models.registry.model_size`` makes) is within ``--tolerance``
   (relative) of the target. Afterwards each timm ``Attention`` gets ``num_heads``, ``head_dim`` and ``attn_dim``
   from its pruned ``qkv`` (as Torch-Pruning's ViT examples do); ``scale`` keeps the original ``1/sqrt(head_dim)``,
   as our head-dimension pruning does, so the model is exported with timm's unfused attention (which uses
   ``scale``; the fused kernel would use the new head size). Exported with plain ``torch.onnx.export`` (legacy,
   opset 17, fixed size, the same input/output names) and checked against torch with onnxruntime.
4. Every ONNX file (unpruned first) is timed in ONE interleaved run of :func:`runtime.bench.benchmark` (round robin,
   one process per model): wall time, process CPU time, ratios paired per round. Params and FLOPs of every file are
   counted the same way, on the ONNX graph (``passes._core.stats.graph_stats``). Output agreement: argmax pixel
   agreement of the logits with the unpruned model on a few random inputs (random weights: a sanity check, not an
   accuracy figure).
5. Prints a markdown table and writes ``bench_torch_pruning.json`` and ``bench_torch_pruning.md`` into ``--out-dir``.

Exits 1 when Torch-Pruning is missing. A failure of our passes other than an unreachable latency target is recorded
(with its traceback) in the row, printed, and makes the script exit 2 after writing its results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import ROOT, export_perturbed, perturbed_model

TP_VERSION = "1.6.1"
INSTALL_HINT = f".venv/bin/pip install --no-deps torch-pruning=={TP_VERSION}"

log = logging.getLogger("bench_torch_pruning")


def _import_tp() -> Any:
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    return tp


def _tp_version(tp: Any) -> str:
    from importlib import metadata

    try:
        return metadata.version("torch-pruning")  # the module's __version__ string lags the release
    except metadata.PackageNotFoundError:
        return str(getattr(tp, "__version__", "?"))


def _run_onnx(path: Path, xs: list[Any]) -> list[Any]:
    from fileformat.session import SessionConfig, load_session

    sess = load_session(path, SessionConfig(spinning=True))
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x})[0] for x in xs]


def _inputs(size: int, images: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(images)]


def _agreement(base: list[Any], other: list[Any]) -> float:
    """Mean fraction of pixels whose argmax class is the same; raises on a shape mismatch."""
    agree = []
    for a, b in zip(base, other):
        if a.shape != b.shape:
            raise ValueError(f"output shape {tuple(b.shape)} differs from the unpruned model's {tuple(a.shape)}")
        agree.append(float((a.argmax(1) == b.argmax(1)).mean()))
    return sum(agree) / len(agree)


# --- Torch-Pruning -----------------------------------------------------------------------------------------------


def _attentions(net: Any) -> list[Any]:
    from timm.layers import Attention

    return [m for m in net.modules() if isinstance(m, Attention)]


def _flops(net: Any, size: int) -> int:
    from models.registry import model_size

    return model_size(net, size).flops


def _tp_prune(tp: Any, net: Any, size: int, ratio: float) -> Any:
    """One-shot global LAMP pruning of a copy of ``net`` at channel ratio ``ratio``; attention fixed up after."""
    import torch

    model = copy.deepcopy(net).eval()
    attns = _attentions(model)
    for a in attns:
        a.fused_attn = False  # trace the explicit q @ k^T / attn @ v (Torch-Pruning's timm examples do the same)
    example = torch.randn(1, 3, size, size)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.LAMPImportance(p=2),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[model.decoder.classifier],
        num_heads={a.qkv: a.num_heads for a in attns},
        prune_num_heads=False,
        prune_head_dims=True,
    )
    pruner.step()
    for a in attns:  # timm's Attention reshapes by these: make them match the pruned qkv
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
        a.attn_dim = a.num_heads * a.head_dim
        if a.proj.in_features != a.attn_dim or a.qkv.out_features != 3 * a.attn_dim:
            raise RuntimeError(f"attention left inconsistent: qkv {a.qkv}, proj {a.proj}, heads {a.num_heads}")
        # a.scale stays 1/sqrt(original head_dim), as in our head-dimension pruning
    return model


def _tp_search(tp: Any, net: Any, size: int, target: float, tol: float, memo: dict[float, float]) -> tuple[Any, dict]:
    """Bisect the pruning ratio until the torch FLOPs ratio is within ``tol`` (relative) of ``target``."""
    base = _flops(net, size)
    lo, hi = 0.0, 0.95
    best: tuple[float, Any, float] | None = None  # (|error|, model, ratio)
    tried = []
    # start from the closest ratios already evaluated for other targets
    for r, f in memo.items():
        if f > target and r > lo:
            lo = r
        if f < target and r < hi:
            hi = r
    for _ in range(14):
        r = (lo + hi) / 2
        try:
            pruned = _tp_prune(tp, net, size, r)
            f = _flops(pruned, size) / base
        except Exception as exc:  # too much pruning can empty a layer: treat it as "too far"
            log.warning("torch-pruning at ratio %.4f failed: %s", r, exc)
            tried.append({"ratio": r, "error": f"{type(exc).__name__}: {exc}"})
            hi = r
            continue
        memo[r] = f
        tried.append({"ratio": round(r, 5), "flops_ratio": round(f, 4)})
        log.info("torch-pruning ratio %.4f -> FLOPs %.4fx (target %g)", r, f, target)
        err = abs(f / target - 1)
        if best is None or err < best[0]:
            best = (err, pruned, r)
        if err <= tol:
            break
        if f > target:
            lo = r
        else:
            hi = r
    if best is None:
        raise RuntimeError(f"torch-pruning found no ratio for FLOPs {target}: {tried}")
    err, model, r = best
    return model, {"pruning_ratio": r, "torch_flops_ratio": memo[r], "search": tried, "within_tol": err <= tol}


def _export_plain(net: Any, size: int, path: Path, seed: int) -> float:
    """``torch.onnx.export`` (legacy, opset 17, fixed size); returns max |onnxruntime - torch|."""
    import io

    import numpy as np
    import onnx
    import torch

    from exporters.export import INPUT_NAME, OUTPUT_NAME
    from fileformat.io import save_model

    net.eval()
    for a in _attentions(net):
        a.fused_attn = False  # the fused kernel would scale by the pruned head size, not by ``scale``
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        do_constant_folding=True,
    )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    save_model(proto, path)
    with torch.no_grad():
        ref = net(example).numpy()
    got = _run_onnx(path, [example.numpy()])[0]
    if got.shape != ref.shape:
        raise RuntimeError(f"onnxruntime output {got.shape} differs from torch's {ref.shape}")
    return float(np.abs(got - ref).max())


def _tp_structure(net: Any) -> dict[str, Any]:
    attns = set(_attentions(net))
    return {
        name: {"heads": m.num_heads, "head_dim": m.head_dim, "width": m.qkv.in_features}
        for name, m in net.named_modules()
        if m in attns
    }


# --- the run -----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tp: Any) -> dict[str, Any]:
    import onnx
    import torch

    from fileformat.errors import PassError
    from fileformat.io import save_model
    from passes._core.stats import graph_stats
    from passes.compress import CompressConfig, compress
    from runtime.bench import BenchConfig, benchmark

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.model}_{args.size}"
    net = perturbed_model(args.model, args.seed)
    base = out_dir / f"{stem}.onnx"
    if not base.exists() or args.fresh:
        log.info(
            "exported %s in %.1fs",
            base,
            export_perturbed(args.model, args.size, base, args.seed, net=copy.deepcopy(net)),
        )
    model = onnx.load(str(base))
    xs = _inputs(args.size, args.images)
    base_out = _run_onnx(base, xs)
    base_stats = graph_stats(model)
    rows: list[dict[str, Any]] = [{"method": "unpruned", "budget": "none", "target": 1.0, "path": str(base)}]
    table_path = out_dir / f"{stem}.latency.json"

    def finish(row: dict[str, Any], path: Path) -> None:
        stats = graph_stats(onnx.load(str(path)))
        row.update(path=str(path), params=stats.params, flops=stats.flops)
        row["params_ratio"] = stats.params / base_stats.params
        row["flops_ratio"] = stats.flops / base_stats.flops
        try:
            row["agreement"] = _agreement(base_out, _run_onnx(path, xs))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
            log.error("%s %s %g: %s", row["method"], row["budget"], row["target"], row["traceback"])

    for target in args.targets:
        for budget in ("flops", "latency"):
            config = CompressConfig(threads=args.threads, latency_table=str(table_path))
            setattr(config, f"target_{budget}", target)
            row: dict[str, Any] = {"method": "ours", "budget": budget, "target": target}
            rows.append(row)
            start = time.perf_counter()
            try:
                pruned, report = compress(model, config)
            except PassError as exc:  # an unreachable latency target is an answer too
                row.update(unreachable=str(exc), seconds=round(time.perf_counter() - start, 1))
                log.warning("ours %s %g: %s", budget, target, exc)
                continue
            except Exception as exc:  # a failure of our passes: recorded with its traceback, reported at the end
                row.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                log.error("ours %s %g failed:\n%s", budget, target, row["traceback"])
                continue
            row["seconds"] = round(time.perf_counter() - start, 1)
            row["budget_report"] = report.extra.get("budget")
            row["latency_ms"] = report.extra.get("latency_ms")
            path = out_dir / f"{stem}_ours_{budget}{target:g}.onnx"
            save_model(pruned, path)
            finish(row, path)
            log.info("ours %s %g: %s in %.1fs", budget, target, row["budget_report"], row["seconds"])

    memo: dict[float, float] = {}
    for target in args.targets:
        row = {"method": "torch-pruning", "budget": "flops", "target": target}
        rows.append(row)
        start = time.perf_counter()
        try:
            pruned_net, info = _tp_search(tp, net, args.size, target, args.tolerance, memo)
            row["seconds_search"] = round(time.perf_counter() - start, 1)
            # the cost of one pruning at the chosen ratio (what a user who knew the ratio would pay)
            t1 = time.perf_counter()
            _tp_prune(tp, net, args.size, info["pruning_ratio"])
            row["seconds"] = round(time.perf_counter() - t1, 1)
            with torch.no_grad():
                y = pruned_net(torch.randn(1, 3, args.size, args.size))
            if tuple(y.shape) != tuple(base_out[0].shape):
                raise RuntimeError(f"pruned torch model gives {tuple(y.shape)}, expected {base_out[0].shape}")
            path = out_dir / f"{stem}_tp_flops{target:g}.onnx"
            row["onnx_vs_torch"] = _export_plain(pruned_net, args.size, path, args.seed)
            row.update(info, attention=_tp_structure(pruned_net))
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            log.error("torch-pruning %g failed:\n%s", target, row["traceback"])
            continue
        finish(row, path)
        log.info("torch-pruning %g: ratio %.4f, FLOPs %.4fx", target, info["pruning_ratio"], row["flops_ratio"])

    timed = [r for r in rows if "path" in r and "error" not in r]
    cfg = BenchConfig(runs=args.runs, warmup=args.warmup, threads=args.threads, providers=("cpu",))
    result = benchmark([r["path"] for r in timed], cfg)
    for row, m in zip(timed, result["models"]):
        r = m["ratios"]
        row.update(
            wall_ms=m["latency_ms"]["median"],
            cpu_ms=m["cpu_ms"]["median"],
            wall_ratio=r["latency_paired"] if r.get("latency_paired") is not None else r["latency"],
            cpu_ratio=r["cpu_paired"] if r.get("cpu_paired") is not None else r["cpu"],
        )
    rows[0].update(params=base_stats.params, flops=base_stats.flops, params_ratio=1.0, flops_ratio=1.0)
    return {
        "model": args.model,
        "size": args.size,
        "targets": args.targets,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "images": args.images,
        "torch_pruning": _tp_version(tp),
        "torch": torch.__version__,
        "rows": rows,
        "bench": result,
    }


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['model']}, input {doc['size']}x{doc['size']}, onnxruntime CPU, {doc['threads']} threads, "
        f"{doc['runs']} interleaved rounds; ratios to the unpruned model (wall and CPU paired per round); params and "
        f"FLOPs counted on the ONNX graph; agreement = argmax pixel agreement on {doc['images']} random inputs "
        f"(random weights); Torch-Pruning {doc['torch_pruning']}",
        "",
        "| model | method | target | params (M) | FLOPs | wall | CPU | predicted | agreement | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        method = r["method"] if r["method"] != "ours" else f"ours ({r['budget']})"
        if "pruning_ratio" in r:
            method += f" (ratio {r['pruning_ratio']:.3f})"
        target = "" if r["budget"] == "none" else f"{r['budget']} {r['target']:g}"
        head = f"| {doc['model']} | {method} | {target} |"
        if "unreachable" in r:
            lines.append(f"{head} not reachable: {r['unreachable'][:100]} |||||| {r['seconds']} |")
            continue
        if "error" in r and "wall_ratio" not in r:
            lines.append(f"{head} FAILED: {r['error'][:100]} |||||||")
            continue
        budget = r.get("budget_report") or {}
        pred = f"{budget['estimated']:.3f}x" if budget.get("metric") == "latency" else ""
        if pred and (r.get("latency_ms") or {}).get("after") is not None:
            pred += f" (measured {budget['achieved']:.3f}x)"
        seconds = _fmt(r.get("seconds"), "")
        if "seconds_search" in r:
            seconds += f" (search {r['seconds_search']})"
        lines.append(
            f"{head} {r['params'] / 1e6:.3f} | {r['flops_ratio']:.3f}x | {_fmt(r.get('wall_ratio'), '.3f')}x | "
            f"{_fmt(r.get('cpu_ratio'), '.3f')}x | {pred} | {_fmt(r.get('agreement'), '.1%')} | {seconds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="paper", help="registry name (default paper)")
    p.add_argument("--size", type=int, default=256, help="input size (default 256)")
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25], help="fractions kept")
    p.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads (default 2)")
    p.add_argument("--images", type=int, default=3, help="random inputs for the agreement (default 3)")
    p.add_argument("--tolerance", type=float, default=0.03, help="Torch-Pruning FLOPs match, relative (default 0.03)")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.add_argument("--fresh", action="store_true", help="re-export even if the unpruned file exists")
    p.add_argument("--out-dir", default=str(ROOT / "artifacts" / "bench_torch_pruning"), help="where files go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tp = _import_tp()
    if tp is None:
        print(
            f"error: Torch-Pruning is not installed. It is not a project dependency; install it without its "
            f"dependencies (a plain install pulls a second torch): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    sys.path.insert(0, str(ROOT))
    doc = run(args, tp)
    out_dir = Path(args.out_dir)
    from fileformat.io import atomic_write_text

    text = table(doc)
    atomic_write_text(out_dir / "bench_torch_pruning.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "bench_torch_pruning.md", text + "\n")
    print(text)
    failed = [r for r in doc["rows"] if r["method"] == "ours" and "traceback" in r]
    for r in failed:
        print(f"\nours ({r['budget']} {r['target']:g}) failed:\n{r['traceback']}", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
