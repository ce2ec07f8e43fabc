"""The accuracy race: what each way of cutting keeps, after the same distillation, at equal measured latency and at
equal FLOPs, over seeds, beside Torch-Pruning in the same run.

``python bench/bench_accuracy.py [--seeds 3] [--size 128] [--parent-steps 600] [--distill-steps 300] [--jobs 2]
[--out-dir artifacts/bench_accuracy]``

Needs Torch-Pruning, which is not a project dependency; install it without its dependencies (a plain install pulls a
second torch): ``.venv/bin/pip install --no-deps torch-pruning==1.6.1``.

Per seed:

1. **Parent.** ``paper`` (MobileViT-S + UPerNet-64) trained ``--parent-steps`` with cross-entropy on synthetic scenes
   (``models.synthetic``, the default generator, ``--train``/``--val`` images at ``--size``), exported (legacy,
   opset 17). The same parent is cut by every method.
2. **Cuts**, to two budgets:
   - *latency*: the measured speed of ``--reference`` (``mobilevit_xxs_upernet64``), i.e. the parent's CPU time
     times the reference's ratio to it (one thread, interleaved: ``passes._core.latency.measure_pair``); every
     method lands its cut in [0.95, 1.0] x the reference's CPU time, measured against the reference itself;
   - *flops*: ``--flops`` (0.5) of the parent's FLOPs (graph count).

   Methods (``--methods``):
   - ``ours``: ``passes.compress`` with its defaults where images are at hand: each cut valued by the damage it does
     to the output on 8 training images (``--importance auto --calib DATA``);
   - ``ours-l2``: the same budget valued by L2 weight norms (LAMP scores; HALP for latency, LAMP for FLOPs);
   - ``ours-1pt``: as ``ours``, but each layer's damage measured at one point (half of it kept) instead of four:
     what ``--damage-points auto`` measures on a model whose runs take seconds (Swin-T + UPerNet at 512);
   - ``ours-noise``: measured damage on images of random pixels (what a user without data could give);
   - ``ours-synthetic``: measured damage on generator-version-1 scenes, which draw the classes unlike the data
     (version 2): a stand-in for scenes that are not the user's;
   - ``uniform``: one kept fraction everywhere (weight norms within layers);
   - ``tp-magnitude`` / ``tp-taylor``: Torch-Pruning's ``MetaPruner(global_pruning=True, isomorphic=True,
     num_heads=..., prune_num_heads=True, prune_head_dims=True)`` with ``MagnitudeImportance`` or
     ``TaylorImportance`` (gradients of the cross-entropy on 4 training batches); one pruning ratio (heads and
     channels alike) bisected until the budget is met as above; timm's attention fixed up after (heads, head
     dimension; the scale stays the original ``1/sqrt(head_dim)``, as in our head-channel cuts).
3. **Distillation**, the same for every cut: ``--distill-steps`` steps of ``models.distill``'s loss (cross-entropy +
   MSE on the parent's logits, the uncut parent as teacher), batch ``--batch-size``, learning rate 5e-4, BatchNorm
   frozen, the seed of the run; our students are rebuilt from their files (``models.prune_torch``), Torch-Pruning's
   are its torch modules; the same training loop (``models.train.train``) trains both.
4. **Scores**: mIoU (dataset-level) of the exported ONNX file on the validation split (``runtime.evaluate``), and one
   interleaved benchmark per seed (``runtime.bench``, one thread, CPU time paired per round) of the parent, the
   reference and every distilled file: the latency ratio to the parent and to the reference. Parameters are counted
   on the graph.

Writes ``accuracy.json``, ``accuracy.md`` (mIoU mean ± std over seeds, latency ratio, params per method and budget)
and ``accuracy.png`` (mIoU against measured latency) into ``--out-dir``. Every stage writes its result as it ends
and a rerun skips what is done: a killed run continues. Numbers are measured on synthetic data and say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT

sys.path.insert(0, str(ROOT))

TP_VERSION = "1.6.1"
INSTALL_HINT = f".venv/bin/pip install --no-deps torch-pruning=={TP_VERSION}"
LATENCY_METHODS = (
    "ours", "ours-1pt", "ours-l2", "ours-noise", "ours-synthetic", "uniform", "tp-magnitude", "tp-taylor"
)  # fmt: skip
FLOPS_METHODS = ("ours", "ours-l2", "uniform", "tp-magnitude", "tp-taylor")
MATCH = (0.95, 1.0)  # the band every latency cut lands in, as a ratio to the reference's CPU time

log = logging.getLogger("bench_accuracy")


def _write(path: Path, obj: Any) -> None:
    from fileformat.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------------------------------- stages
def make_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The data (default generator) and the generator-version-1 scenes the ``ours-synthetic`` method values by."""
    from models.synthetic import generate

    data, other = out / "data", out / "scenes_v1"
    if not (data / "SYNTHETIC.json").exists():
        generate(data, n_train=args.train, n_val=args.val, size=args.size, seed=0)
    if not (other / "SYNTHETIC.json").exists():
        generate(other, n_train=8, n_val=1, size=args.size, seed=1, version=1)
    return data, other


def train_parent(seed_dir: Path, data: Path, seed: int, args: argparse.Namespace) -> tuple[Path, Path]:
    """The trained parent's checkpoint and its ONNX export (skipped when both exist)."""
    from exporters.export import ExportOptions, export_torch_model
    from models.train import TrainConfig, model_from_checkpoint, train

    ckpt, onnx_path = seed_dir / "parent" / "checkpoint.pt", seed_dir / "parent.onnx"
    if not onnx_path.exists():
        cfg = TrainConfig(
            model="paper", data=str(data), out=str(seed_dir / "parent"), steps=args.parent_steps,
            batch_size=args.batch_size, crop=args.size, seed=seed, threads=args.threads, eval_split=None,
        )  # fmt: skip
        if not ckpt.exists():
            train(cfg, progress=f"parent seed {seed}")
        net = model_from_checkpoint(ckpt)
        export_torch_model(net, onnx_path, ExportOptions(model="paper", input_size=args.size, opset=17, seed=seed))
    return ckpt, onnx_path


def export_reference(seed_dir: Path, seed: int, args: argparse.Namespace) -> Path:
    """The reference configuration (random weights: it is only timed)."""
    import torch

    from exporters.export import ExportOptions, export_torch_model
    from models.registry import build_model

    path = seed_dir / "reference.onnx"
    if not path.exists():
        torch.manual_seed(seed)
        opts = ExportOptions(model=args.reference, input_size=args.size, opset=17, seed=seed)
        export_torch_model(build_model(args.reference), path, opts)
    return path


def latency_target(parent: Path, ref: Path) -> float:
    """The reference's CPU-time ratio to the parent (one thread, interleaved), measured once per seed: every method
    of the seed is held to the same target."""
    import onnx

    from passes.compress import latency_of

    cache = parent.parent / "latency_target.json"
    if not cache.exists():
        _write(cache, {"ratio": latency_of(onnx.load(str(parent)), onnx.load(str(ref)))})
    return float(_read(cache)["ratio"])


def cut_ours(method: str, budget: str, parent: Path, ref: Path, dirs: dict[str, Path], args: argparse.Namespace) -> Any:
    """``passes.compress`` as ``method`` values it: the cut model and the report."""
    import onnx

    from models.calib import calibration_feeds
    from passes.compress import CompressConfig, compress

    model, reference = onnx.load(str(parent)), onnx.load(str(ref))
    config = CompressConfig(threads=args.threads)
    if budget == "latency":
        config.target_latency = latency_target(parent, ref)
        config.latency_reference = reference
    else:
        config.target_flops = args.flops
    if method == "uniform":
        config.allocation, config.importance = "uniform", "l2"
    elif method == "ours-l2":
        config.importance = "l2"
    else:
        sources = {"ours": dirs["data"], "ours-1pt": dirs["data"], "ours-noise": "noise"}
        source = {**sources, "ours-synthetic": dirs["scenes"]}[method]
        config.damage_points = 1 if method == "ours-1pt" else 4
        with calibration_feeds(model, source, count=8, progress=False) as feeds:
            config.importance, config.calib = "sensitivity", list(feeds)
        config.calib_source = f"8 images of {source}"
    return compress(model, config)


def _attentions(net: Any) -> list[Any]:
    from timm.layers import Attention

    return [m for m in net.modules() if isinstance(m, Attention)]


def _train_batches(data: Path, count: int, size: int) -> list[tuple[Any, Any]]:
    """``count`` batches of 8 training images and masks (for Taylor importance's gradients)."""
    import numpy as np
    import torch

    from models.data import find_samples, load_sample, normalize

    samples = find_samples(data, "train")[: 8 * count]
    loaded = [load_sample(s) for s in samples]
    images = torch.from_numpy(np.stack([normalize(s.image) for s in loaded]))
    masks = torch.from_numpy(np.stack([s.mask for s in loaded]).astype(np.int64))
    return [(images[i : i + 8], masks[i : i + 8]) for i in range(0, len(loaded), 8)]


def tp_prune(
    net: Any, ratio: float, importance: str, batches: list[tuple[Any, Any]], size: int, head_ratio: float | None = None
) -> Any:
    """Torch-Pruning's global isomorphic pruning of a copy of ``net``: channels at ``ratio``, heads at
    ``head_ratio`` (default: the same)."""
    import copy

    import torch
    import torch.nn.functional as F
    import torch_pruning as tp

    model = copy.deepcopy(net).eval()
    attns = _attentions(model)
    for a in attns:
        a.fused_attn = False  # trace the explicit q @ k^T / attn @ v (Torch-Pruning's timm examples do the same)
    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, size, size),
        importance=imp,
        global_pruning=True,
        isomorphic=True,
        pruning_ratio=ratio,
        ignored_layers=[model.decoder.classifier],
        num_heads={a.qkv: a.num_heads for a in attns},
        prune_num_heads=True,
        prune_head_dims=True,
        head_pruning_ratio=ratio if head_ratio is None else head_ratio,
    )
    if importance == "taylor":
        model.zero_grad()
        for images, masks in batches:
            logits = model(images)
            F.cross_entropy(F.interpolate(logits, size=masks.shape[-2:], mode="bilinear"), masks).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for a in attns:  # timm's Attention reshapes by these: make them match the pruned qkv
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
        a.attn_dim = a.num_heads * a.head_dim
        if a.proj.in_features != a.attn_dim or a.qkv.out_features != 3 * a.attn_dim:
            raise RuntimeError(f"attention left inconsistent: qkv {a.qkv}, proj {a.proj}, heads {a.num_heads}")
    return model


def export_plain(net: Any, size: int, path: Path) -> None:
    """``torch.onnx.export`` (legacy, opset 17, fixed size, our input/output names), unfused attention."""
    import io

    import onnx
    import torch

    from exporters.export import INPUT_NAME, OUTPUT_NAME
    from fileformat.io import save_model

    net.eval()
    for a in _attentions(net):
        a.fused_attn = False  # the fused kernel would scale by the pruned head size, not by ``scale``
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, size, size),), buf, dynamo=False, opset_version=17,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
    )  # fmt: skip
    save_model(onnx.load_from_string(buf.getvalue()), path)


def cut_tp(
    importance: str, budget: str, ckpt: Path, parent: Path, ref: Path, data: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Bisect Torch-Pruning's ratio until its cut meets the budget; save the pruned module and its export."""
    import onnx
    import torch

    from models.registry import model_size
    from models.train import model_from_checkpoint
    from passes._core import latency

    net = model_from_checkpoint(ckpt).eval()
    batches = _train_batches(data, 4, args.size) if importance == "taylor" else []
    reference = onnx.load(str(ref))
    base_flops = model_size(net, args.size).flops
    target = latency_target(parent, ref) if budget == "latency" else args.flops
    work.mkdir(parents=True, exist_ok=True)
    tried: list[dict[str, Any]] = []
    best: tuple[float, float, float, Any] | None = None  # (miss, ratio, head ratio, model)
    probe = work / "probe.onnx"

    def measure(pruned: Any) -> tuple[float, float, float]:
        if budget == "latency":
            export_plain(pruned, args.size, probe)
            return latency.measure_pair(reference, onnx.load(str(probe)), min_seconds=1.0).ratio, *MATCH
        return model_size(pruned, args.size).flops / base_flops, target * 0.97, target

    def search(lo: float, hi: float, head: float | None) -> tuple[float, float] | None:
        """Bisect the channel ratio in [lo, hi] (heads at ``head``, or alike); the last bracket if none lands."""
        nonlocal best
        over, under = lo, hi
        for _ in range(10):
            r = (lo + hi) / 2
            try:
                pruned = tp_prune(net, r, importance, batches, args.size, head)
            except Exception as exc:  # too much pruning can empty a layer: too far
                tried.append({"ratio": r, "head_ratio": head, "error": f"{type(exc).__name__}: {exc}"})
                hi = under = r
                continue
            value, low, high = measure(pruned)
            tried.append({"ratio": round(r, 5), "head_ratio": head, "value": round(value, 4)})
            log.info("tp-%s %s: ratio %.4f (heads %s) -> %.4f (band %.3f-%.3f)", importance, budget, r, head, value,
                     low, high)  # fmt: skip
            miss = 0.0 if low <= value <= high else (value - high if value > high else low - value + 1.0)
            if best is None or miss < best[0]:
                best = (miss, r, r if head is None else head, pruned)
            if miss == 0.0:
                return None
            if value > high:
                lo = over = r
            else:
                hi = under = r
        return over, under

    bracket = search(0.0, 0.95, None)
    if bracket is not None:  # a jump (a head more or less) stepped over the band: heads fixed, channels alone
        over, _ = bracket
        search(over, 0.95, over)
    if best is None:
        raise RuntimeError(f"Torch-Pruning found no ratio for the {budget} budget: {tried}")
    _, ratio, head_ratio, pruned = best
    torch.save(pruned, work / "student.pt")  # the pruned module itself: a benchmark's own file
    export_plain(pruned, args.size, work / "cut.onnx")
    probe.unlink(missing_ok=True)
    return {"ratio": ratio, "head_ratio": head_ratio, "search": tried, "target": target}


def distill_job(job: dict[str, Any]) -> dict[str, Any]:
    """One distillation (run in a worker process): student, teacher, same loop for every method; export and
    score the result."""
    import torch

    from exporters.export import ExportOptions, export_torch_model
    from models.distill import DistillObjective, TeacherOutputs, freeze_batchnorm, load_teacher
    from models.losses import DistillLoss, LossConfig
    from models.prune_torch import student_from_onnx
    from models.train import TrainConfig, train
    from runtime.evaluate import EvalConfig, evaluate
    from runtime.session import OnnxSegmenter

    torch.set_num_threads(job["threads"])
    work = Path(job["work"])
    final = work / "final.onnx"
    if job["tp"]:
        student, plan = torch.load(work / "student.pt", weights_only=False), None  # our own pickle, just written
    else:
        student, plan, _ = student_from_onnx(work / "cut.onnx")
    teacher = load_teacher(job["teacher"])
    torch.manual_seed(job["seed"])
    loss = DistillLoss(LossConfig(), student_channels=student.backbone.channels)
    freeze_batchnorm(student)
    objective = DistillObjective(loss, TeacherOutputs(teacher, (), None), student)
    cfg = TrainConfig(
        model="paper", data=job["data"], out=str(work / "distill"), steps=job["steps"], batch_size=job["batch_size"],
        crop=job["size"], lr=5e-4, seed=job["seed"], threads=job["threads"], eval_split=None,
        checkpoint_every=100,
    )  # fmt: skip
    resume = work / "distill" / "checkpoint.pt"
    train(cfg, student, loss_fn=objective, resume=resume if resume.exists() else None)
    objective.close()
    student.eval()
    if job["tp"]:
        export_plain(student, job["size"], final)
    else:
        opts = ExportOptions(model="paper", input_size=job["size"], opset=17, seed=job["seed"])
        export_torch_model(student, final, opts, extra_metadata={"plan": plan})
    result = evaluate(OnnxSegmenter(final, threads=job["threads"]), job["data"], "val", EvalConfig(progress=False))
    out = {"miou": result["miou"], "per_class_iou": result.get("per_class_iou"), "path": str(final)}
    _write(work / "score.json", out)
    return out


# ------------------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out_dir)
    data, scenes = make_data(out, args)
    dirs = {"data": data, "scenes": scenes}
    jobs, rows = [], []
    with ProcessPoolExecutor(args.jobs) as pool:  # the parents, side by side
        parents = list(pool.map(_parent_job, [(out / f"seed{s}", data, s, args) for s in range(args.seeds)]))
    for seed in range(args.seeds):
        seed_dir = out / f"seed{seed}"
        ckpt, parent = parents[seed]
        ref = export_reference(seed_dir, seed, args)
        for budget, methods in (("latency", LATENCY_METHODS), ("flops", FLOPS_METHODS)):
            if budget not in args.budgets:
                continue
            for method in methods:
                if method not in args.methods:
                    continue
                work = seed_dir / f"{budget}-{method}"
                row = {"seed": seed, "budget": budget, "method": method, "work": str(work)}
                rows.append(row)
                cut = work / "cut.json"
                if not cut.exists():
                    start = time.process_time()
                    try:
                        if method.startswith("tp-"):
                            info = cut_tp(method[3:], budget, ckpt, parent, ref, data, work, args)
                        else:
                            from fileformat.io import save_model

                            model, report = cut_ours(method, budget, parent, ref, dirs, args)
                            work.mkdir(parents=True, exist_ok=True)
                            save_model(model, work / "cut.onnx")
                            info = {
                                "budget_report": report.extra.get("budget"),
                                "valuation": report.extra.get("valuation"),
                            }
                    except Exception as exc:  # a method that cannot meet the budget is an answer too
                        info = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                        log.error("%s %s seed %d: %s", method, budget, seed, info["error"])
                    info["cpu_seconds"] = round(time.process_time() - start, 1)
                    _write(cut, info)
                row.update(_read(cut))
                if "error" not in row and not args.no_distill and not (work / "score.json").exists():
                    jobs.append(
                        {
                            "work": str(work), "tp": method.startswith("tp-"), "teacher": str(ckpt),
                            "data": str(data), "steps": args.distill_steps, "batch_size": args.batch_size,
                            "size": args.size, "seed": seed, "threads": args.threads,
                        }
                    )  # fmt: skip
    if jobs:
        log.info("%d distillations, %d at a time", len(jobs), args.jobs)
        with ProcessPoolExecutor(args.jobs) as pool:
            for job, done in zip(jobs, pool.map(_safe_distill, jobs)):
                log.info("distilled %s: %s", job["work"], done.get("miou", done.get("error")))
    for row in rows:
        row.update(_read(Path(row["work"]) / "score.json") or {})
    bench_seeds(out, rows, args)
    return {"args": vars(args), "rows": rows}


def _parent_job(job: tuple[Path, Path, int, argparse.Namespace]) -> tuple[Path, Path]:
    return train_parent(*job)


def _safe_distill(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return distill_job(job)
    except Exception as exc:
        err = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        _write(Path(job["work"]) / "score_error.json", err)
        return err


def bench_seeds(out: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """One interleaved benchmark per seed: parent, reference, every distilled file (one thread, CPU time)."""
    import onnx

    from passes._core.stats import graph_stats
    from runtime.bench import BenchConfig, benchmark

    for seed in range(args.seeds):
        seed_dir = out / f"seed{seed}"
        done = _read(seed_dir / "bench.json")
        scored = [r for r in rows if r["seed"] == seed and "path" in r]
        paths = [str(seed_dir / "parent.onnx"), str(seed_dir / "reference.onnx"), *[r["path"] for r in scored]]
        if done is None or done.get("paths") != paths:
            result = benchmark(paths, BenchConfig(runs=args.bench_runs, warmup=3, threads=1, providers=("cpu",)))
            done = {"paths": paths, "cpu_ms": [m["cpu_ms"]["median"] for m in result["models"]]}
            done["paired"] = [m["ratios"].get("cpu_paired") or m["ratios"]["cpu"] for m in result["models"]]
            _write(seed_dir / "bench.json", done)
        ref_ratio = done["paired"][1]
        parent_params = graph_stats(onnx.load(paths[0])).params
        for r, ratio in zip(scored, done["paired"][2:]):
            r["latency_ratio"] = ratio
            r["of_reference"] = ratio / ref_ratio
            r["params"] = graph_stats(onnx.load(r["path"])).params
            r["params_ratio"] = r["params"] / parent_params
        for r in rows:
            if r["seed"] == seed:
                r["reference_ratio"] = ref_ratio


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget and method: mIoU mean and std over seeds, latency ratio, ratio to the reference, params."""
    out = []
    keys = dict.fromkeys((r["budget"], r["method"]) for r in doc["rows"])
    for budget, method in keys:
        rs = [r for r in doc["rows"] if r["budget"] == budget and r["method"] == method]
        ok = [r for r in rs if "miou" in r]
        failed = [r for r in rs if r.get("error")]
        entry: dict[str, Any] = {"budget": budget, "method": method, "runs": len(ok), "failed": len(failed)}
        entry["pending"] = len(rs) - len(ok) - len(failed)
        if ok:
            mious = [100 * r["miou"] for r in ok]
            entry["miou"] = statistics.mean(mious)
            entry["miou_std"] = statistics.stdev(mious) if len(mious) > 1 else 0.0
            for k in ("latency_ratio", "of_reference", "params", "params_ratio"):
                vals = [r[k] for r in ok if k in r]
                entry[k] = statistics.mean(vals) if vals else None
        errors = [r.get("error") for r in rs if r.get("error")]
        if errors:
            entry["error"] = errors[0]
        out.append(entry)
    return out


def table(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lines = [
        f"paper (MobileViT-S + UPerNet-64) at {a['size']} px, **synthetic data**, {a['seeds']} seeds; parent trained "
        f"{a['parent_steps']} steps, every cut distilled {a['distill_steps']} steps from it; latency = onnxruntime "
        "CPU, 1 thread, CPU time paired per round against the parent (and against the reference); params on the graph",
        "",
        "| budget | method | mIoU % (mean ± std) | x parent CPU time | x reference | params (M) |",
        "|---|---|---|---|---|---|",
    ]
    for e in doc["summary"]:
        if "miou" not in e:
            what = f"failed: {str(e.get('error', ''))[:80]}" if e["failed"] else "not distilled"
            lines.append(f"| {e['budget']} | {e['method']} | {what} | | | |")
            continue
        lat = "" if e.get("latency_ratio") is None else f"{e['latency_ratio']:.3f}"
        ref = "" if e.get("of_reference") is None else f"{e['of_reference']:.3f}"
        params = "" if e.get("params") is None else f"{e['params'] / 1e6:.2f}"
        seeds = f" ({e['runs']} seed{'s' if e['runs'] > 1 else ''}"
        seeds += f", {e['failed']} failed)" if e["failed"] else ")"
        lines.append(
            f"| {e['budget']} | {e['method']} | {e['miou']:.1f} ± {e['miou_std']:.1f}{seeds} | {lat} | {ref} | "
            f"{params} |"
        )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in doc["summary"]:
        if "miou" in e and e.get("latency_ratio") is not None:
            marker = "o" if e["budget"] == "latency" else "s"
            ax.errorbar(
                e["latency_ratio"],
                e["miou"],
                yerr=e["miou_std"],
                fmt=marker,
                capsize=3,
                label=f"{e['method']} ({e['budget']})",
            )
    ax.set_xlabel("CPU time x parent (1 thread)")
    ax.set_ylabel("mIoU % (synthetic data)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train", type=int, default=300, help="training images (default 300)")
    p.add_argument("--val", type=int, default=60, help="validation images (default 60)")
    p.add_argument("--parent-steps", type=int, default=600)
    p.add_argument("--distill-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reference", default="mobilevit_xxs_upernet64", help="the model whose latency is matched")
    p.add_argument("--flops", type=float, default=0.5, help="the FLOPs budget (default 0.5)")
    p.add_argument("--methods", nargs="+", default=list(dict.fromkeys(LATENCY_METHODS + FLOPS_METHODS)))
    p.add_argument("--budgets", nargs="+", choices=("latency", "flops"), default=["latency", "flops"])
    p.add_argument(
        "--no-distill", action="store_true", help="distill nothing new: tabulate what is scored (a partial run's table)"
    )
    p.add_argument("--jobs", type=int, default=2, help="distillations at once (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads per job (default 1)")
    p.add_argument("--bench-runs", type=int, default=40)
    p.add_argument("--out-dir", default=str(ROOT / "artifacts" / "bench_accuracy"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        if any(m.startswith("tp-") for m in args.methods):
            print(f"error: Torch-Pruning is not installed (not a project dependency): {INSTALL_HINT}", file=sys.stderr)
            return 1
    doc = run(args)
    doc["summary"] = summarize(doc)
    out = Path(args.out_dir)
    from fileformat.io import atomic_write_text

    text = table(doc)
    _write(out / "accuracy.json", doc)
    atomic_write_text(out / "accuracy.md", text + "\n")
    plot(doc, out / "accuracy.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
