"""The run report of the pipeline: one row per stage, the reference frontier, and the plots.

Reads what the stages wrote (``RUN/reports/*.json``) and the ONNX files themselves; writes ``RUN/report.json``,
``RUN/report.md``, ``RUN/accuracy_vs_latency.png`` and ``RUN/per_class_iou.png``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from fileformat.io import atomic_write_text
from passes._core.stats import graph_stats

if TYPE_CHECKING:
    from runtime.pipeline import Pipeline

COLUMNS = (
    ("stage", "stage", "{}"),
    ("params", "params (M)", "{:.3f}"),
    ("flops", "GFLOPs", "{:.3f}"),
    ("file_mb", "file (MB)", "{:.2f}"),
    ("latency_ms", "ORT CPU time (ms)", "{:.2f}"),
    ("latency_ratio", "CPU time vs baseline", "{:.3f}x"),
    ("miou", "mIoU", "{:.4f}"),
    ("mdice", "mDice", "{:.4f}"),
    ("agreement", "pixel agreement vs previous", "{:.2%}"),
    ("nano_fps_estimate", "Nano FPS (estimate)", "{:.1f}"),
)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _metrics(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, float | None]:
    """(metrics of the stage's model, pixel agreement with the previous stage) from an evaluate JSON."""
    if doc is None:
        return None, None
    if "b" in doc:  # comparison mode: A = previous stage, B = this one
        return doc["b"], doc.get("agreement")
    return doc, None


def _latency(bench: dict[str, Any] | None, path: Path) -> float | None:
    """The model's median process CPU time per run (onnxruntime, interleaved with the other files): on a shared
    machine wall times of the same file move by half between runs, CPU time much less."""
    for m in (bench or {}).get("models", []):
        if Path(m["path"]).resolve() == path.resolve():
            return float((m.get("cpu_ms") or m["latency_ms"])["median"])
    return None


def _row(name: str, path: Path, pipeline: Pipeline, bench: dict[str, Any] | None) -> dict[str, Any]:
    from passes.check_target import check_target

    model = onnx.load(str(path))
    stats = graph_stats(model)
    metrics, agreement = _metrics(_load(pipeline.reports / f"eval_{name}.json"))
    try:
        fps = check_target(model, pipeline.cfg.target, name=name).estimate.get("fps")
    except Exception:  # an estimate is decoration; its absence must not lose the report
        fps = None
    return {
        "stage": name,
        "file": str(path),
        "params": stats.params / 1e6,
        "flops": stats.flops / 1e9,
        "file_mb": path.stat().st_size / 1e6,
        "latency_ms": _latency(bench, path),
        "miou": metrics.get("miou") if metrics else None,
        "mdice": metrics.get("mdice") if metrics else None,
        "pixel_accuracy": metrics.get("pixel_accuracy") if metrics else None,
        "agreement": agreement,
        "nano_fps_estimate": fps,
        "per_class_iou": [c.get("iou") for c in metrics["per_class"]] if metrics else None,
    }


def write_report(pipeline: Pipeline) -> dict[str, Any]:
    """Collect every stage's numbers into report.json / report.md and draw the plots; return the report."""
    rep = pipeline.reports
    bench = _load(rep / "bench.json")
    rows = [_row(name, path, pipeline, bench) for name, path in pipeline.files.items() if path.exists()]
    base = next((r for r in rows if r["stage"] == "baseline"), None)
    for r in rows:
        b = base["latency_ms"] if base else None
        r["latency_ratio"] = r["latency_ms"] / b if r["latency_ms"] and b else None
    frontier = []
    for model, path in pipeline.frontier.items():
        if path.exists():
            if path == pipeline.files.get("baseline"):
                name = "baseline"
            elif path == pipeline.teacher_onnx:
                name = "teacher"
            else:
                name = f"frontier_{model}"
            row = _row(name, path, pipeline, bench)
            row["stage"] = f"{model} (uncompressed{', teacher' if name == 'teacher' else ''})"
            frontier.append(row)
    teacher = None
    if pipeline.teacher_onnx.exists() and pipeline.teacher_onnx not in pipeline.frontier.values():
        teacher = _row("teacher", pipeline.teacher_onnx, pipeline, bench)
    data_doc = _load(rep / "eval_baseline.json") or {}
    synthetic = bool((data_doc.get("data") or {}).get("synthetic", pipeline.cfg.data is None))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "data": "synthetic" if synthetic else str(pipeline.data),
        "generator_version": (data_doc.get("data") or {}).get("generator", {}).get("version") if synthetic else None,
        "config": {k: v for k, v in vars(pipeline.cfg).items() if k != "extra_env"},
        "stages": rows,
        "frontier": frontier,
        "teacher": teacher,
        "parity": {p: _load(rep / f"parity_{p}.json") for p in ("fp16", "int8")},
        "check_target": _load(rep / "check_target.json"),
        "compress": _load(rep / "compress.json"),
        "timings": [vars(r) for r in pipeline.results],
    }
    report["equal_latency"] = _equal_latency(report, pipeline)
    report["plots"] = _plots(report, pipeline.run)
    atomic_write_text(pipeline.run / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(pipeline.run / "report.md", format_markdown(report))
    return report


def _equal_latency(report: dict[str, Any], pipeline: Pipeline) -> dict[str, Any] | None:
    """The distilled student against the frontier model whose latency it was compressed to."""
    ref = pipeline.cfg.match_latency_of
    distilled = next((r for r in report["stages"] if r["stage"] == "distilled"), None)
    other = next((r for r in report["frontier"] if r["stage"].startswith(f"{ref} ")), None) if ref else None
    if not distilled or not other or not distilled["latency_ms"] or not other["latency_ms"]:
        return None
    if distilled["miou"] is None or other["miou"] is None:
        return None
    return {
        "reference": ref,
        "reference_steps": pipeline.cfg.student_steps + pipeline.cfg.distill_steps,
        "latency_ratio": distilled["latency_ms"] / other["latency_ms"],
        "delta_miou_points": 100.0 * (distilled["miou"] - other["miou"]),
    }


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_markdown_table(report: dict[str, Any]) -> str:
    rows = (
        report["stages"]
        + report["frontier"]
        + ([dict(report["teacher"], stage="teacher")] if report.get("teacher") else [])
    )
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k), f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    match = cfg.get("match_latency_of")
    budget = f"compressed to the measured latency of `{match}`" if match else f"FLOPs target {cfg['target_flops']}"
    parts = [
        f"# Compression report ({report['data']} data"
        + (f", generator version {report['generator_version']})" if report.get("generator_version") else ")"),
        "",
        f"{report['date']} on {report['machine']} (Python {report['python']}); student `{cfg['student']}`, teacher "
        f"`{cfg['teacher']}`, input {cfg['size']}x{cfg['size']}, {budget}, "
        f"device profile `{cfg['target']}`. Latency: onnxruntime CPU, {cfg.get('latency_threads', cfg['threads'])} "
        "threads, median process CPU "
        "time per run, all files timed interleaved (wall time on a shared machine moves too much to compare runs). "
        "Nano FPS is an estimate from FLOPs and the device's peak (passes.check_target), not a measurement.",
        "",
        format_markdown_table(report),
        "",
    ]
    for prec, doc in report["parity"].items():
        if doc:
            verdict = "PASS" if doc.get("passed") else "FAIL"
            parts.append(
                f"- parity {prec}: {verdict} (pixel agreement {_cell(doc.get('agreement'), '{:.2f}')} %, "
                f"mIoU drop {_cell(doc.get('miou_drop_points'), '{:.2f}')} points)"
            )
    eq = report.get("equal_latency")
    if eq:
        parts.append(
            f"- at equal latency: the distilled `{cfg['student']}` takes {eq['latency_ratio']:.3f}x the CPU time of "
            f"`{eq['reference']}` (uncompressed, {eq['reference_steps']} steps) and scores "
            f"{eq['delta_miou_points']:+.2f} mIoU points against it (one seed; `python -m runtime.frontier` measures "
            "this over seeds)"
        )
    ct = report.get("check_target")
    if ct:
        parts.append(f"- {cfg['target']} compatibility: {'compatible' if ct.get('compatible') else 'INCOMPATIBLE'}")
    parts += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in report.get("plots", [])], ""]
    return "\n".join(parts)


def _plots(report: dict[str, Any], run: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    pts = [r for r in report["stages"] if r["latency_ms"] and r["miou"] is not None]
    front = [r for r in report["frontier"] if r["latency_ms"] and r["miou"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if front:
            front = sorted(front, key=lambda r: r["latency_ms"])
            ax.plot(
                [r["latency_ms"] for r in front],
                [r["miou"] for r in front],
                "--o",
                color="grey",
                label="uncompressed students (frontier)",
            )
            for r in front:
                ax.annotate(r["stage"].split(" ")[0], (r["latency_ms"], r["miou"]), fontsize=7, color="grey")
        ax.scatter(
            [r["latency_ms"] for r in pts],
            [r["miou"] for r in pts],
            color="tab:blue",
            zorder=3,
            label="compression stages (arrows: order)",
        )
        for a, b in zip(pts, pts[1:]):
            ax.annotate(
                "",
                xy=(b["latency_ms"], b["miou"]),
                xytext=(a["latency_ms"], a["miou"]),
                arrowprops={"arrowstyle": "->", "color": "tab:blue", "alpha": 0.4},
            )
        for r in pts:
            ax.annotate(r["stage"], (r["latency_ms"], r["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("onnxruntime CPU time per image (ms, median)")
        ax.set_ylabel(f"mIoU ({report['data']} val)")
        ax.set_title("accuracy against latency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = run / "accuracy_vs_latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(str(path))
    first = next((r for r in report["stages"] if r["per_class_iou"]), None)
    last = next((r for r in reversed(report["stages"]) if r["per_class_iou"]), None)
    if first and last:
        from models.constants import CLASS_NAMES

        n = len(first["per_class_iou"])
        names = list(CLASS_NAMES[:n]) if n <= len(CLASS_NAMES) else [str(i) for i in range(n)]
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.4
        for k, (row, colour) in enumerate(((first, "tab:grey"), (last, "tab:blue"))):
            vals = [v if v is not None else 0.0 for v in row["per_class_iou"]]
            ax.bar([i + (k - 0.5) * width for i in range(n)], vals, width, label=row["stage"], color=colour)
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("IoU")
        ax.set_title(f"per-class IoU before and after compression ({report['data']} val)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = run / "per_class_iou.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(str(path))
    return out
