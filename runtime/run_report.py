"""The run report of the pipeline: one row per stage, the reference frontier, and the plots.

``runtime.pipeline`` writes it at the end of every run; ``python -m runtime.report RUN`` (:mod:`runtime.report`, the
command line above the pipeline) writes it again from what the stages of the run in ``RUN`` wrote (its
``config.json`` says which stages those are).

Reads what the stages wrote (``RUN/reports/*.json``) and the ONNX files themselves; writes ``RUN/report.json``,
``RUN/report.md``, ``RUN/accuracy_vs_latency.png`` and ``RUN/per_class_iou.png``. The table stays within 120
columns (the JSON has every number). The report says what a table alone would hide: a model whose predictions are
one class everywhere (collapsed: its mIoU says nothing about compression), a stage whose predictions are those of
another, and whether "equal latency" holds (within :data:`EQUAL_LATENCY_TOLERANCE`) or by how much it missed.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Protocol

from fileformat.io import atomic_write_text


class PipelineRun(Protocol):
    """What the report reads of a run (:class:`runtime.pipeline.Pipeline`, after its ``stages()``): the
    configuration, the folders, the files each stage wrote, the frontier and teacher files, the stage results."""

    cfg: Any
    run: Path
    data: Path
    reports: Path
    files: dict[str, Path]
    frontier: dict[str, Path]
    teacher_onnx: Path
    results: list[Any]


COLUMNS = (
    ("stage", "stage", "{}"),
    ("params", "params M", "{:.3f}"),
    ("flops", "GFLOPs", "{:.3f}"),
    ("file_mb", "MB", "{:.2f}"),
    ("latency_ms", "CPU ms", "{:.2f}"),
    ("latency_ratio", "x base", "{:.3f}x"),
    ("miou", "mIoU", "{:.4f}"),
    ("mdice", "mDice", "{:.4f}"),
    ("agreement", "agree", "{:.2%}"),
    ("nano_fps_estimate", "Nano FPS*", "{:.1f}"),
)
LEGEND = (
    "MB: file size; CPU ms: onnxruntime process CPU time per run (median); x base: that time against the baseline's; "
    "agree: pixel agreement with the previous stage; Nano FPS*: an estimate from FLOPs and the device's peak "
    "(passes.check_target), not a measurement."
)
#: "at equal latency" is said only within this much of the reference's CPU time (compress --target-latency-of
#: lands within its --latency-tolerance, 5%, under it)
EQUAL_LATENCY_TOLERANCE = 0.05


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


def _row(name: str, path: Path, pipeline: PipelineRun, bench: dict[str, Any] | None) -> dict[str, Any]:
    import onnx

    from passes._core.stats import graph_stats
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
        "pred_pixels": [c.get("pred_pixels") for c in metrics["per_class"]] if metrics else None,
    }


def write_report(pipeline: PipelineRun) -> dict[str, Any]:
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
    report["warnings"] = warnings_of(report)
    report["plots"] = _plots(report, pipeline.run)
    atomic_write_text(pipeline.run / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(pipeline.run / "report.md", format_markdown(report))
    return report


def _equal_latency(report: dict[str, Any], pipeline: PipelineRun) -> dict[str, Any] | None:
    """The distilled student against the frontier model whose latency it was compressed to."""
    ref = pipeline.cfg.match_latency_of
    distilled = next((r for r in report["stages"] if r["stage"] == "distilled"), None)
    other = next((r for r in report["frontier"] if r["stage"].startswith(f"{ref} ")), None) if ref else None
    if not distilled or not other or not distilled["latency_ms"] or not other["latency_ms"]:
        return None
    if distilled["miou"] is None or other["miou"] is None:
        return None
    ratio = distilled["latency_ms"] / other["latency_ms"]
    return {
        "reference": ref,
        "reference_steps": pipeline.cfg.student_steps + pipeline.cfg.distill_steps,
        "latency_ratio": ratio,
        "equal": abs(ratio - 1.0) <= EQUAL_LATENCY_TOLERANCE,
        "tolerance": EQUAL_LATENCY_TOLERANCE,
        "delta_miou_points": 100.0 * (distilled["miou"] - other["miou"]),
    }


def _all_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return (
        report["stages"]
        + report["frontier"]
        + ([dict(report["teacher"], stage="teacher")] if report.get("teacher") else [])
    )


def warnings_of(report: dict[str, Any]) -> list[str]:
    """What the table would hide: models that predict one class everywhere (collapsed: their mIoU measures nothing),
    stages whose predictions are another's, pixel for pixel."""
    from models.constants import CLASS_NAMES

    out: list[str] = []
    rows = [r for r in _all_rows(report) if r.get("pred_pixels")]
    constant: dict[str, list[str]] = {}
    for r in rows:
        hit = [i for i, n in enumerate(r["pred_pixels"]) if n]
        if len(hit) == 1:
            name = CLASS_NAMES[hit[0]] if hit[0] < len(CLASS_NAMES) else f"class {hit[0]}"
            constant.setdefault(name, []).append(r["stage"])
    for cls, stages in constant.items():
        out.append(
            f"{', '.join(stages)} predict{'s' if len(stages) == 1 else ''} '{cls}' on every pixel: a collapsed model, "
            "whose mIoU says nothing about compression; train longer (--student-steps, --teacher-steps) or check "
            "the data"
        )
    collapsed = {s for stages in constant.values() for s in stages}
    previous = None
    for r in report["stages"]:
        if previous and r.get("agreement") == 1.0 and r["stage"] not in collapsed:
            out.append(f"{r['stage']} predicts exactly what {previous} predicts, on every pixel")
        previous = r["stage"]
    seen: dict[tuple[int, ...], str] = {}
    for r in rows:
        if r["stage"] in collapsed:
            continue
        key = tuple(int(n) for n in r["pred_pixels"])
        if key in seen and r.get("agreement") != 1.0:
            out.append(f"{r['stage']} and {seen[key]} predict the same number of pixels of every class")
        seen.setdefault(key, r["stage"])
    return out


def _configuration(cfg: dict[str, Any]) -> str:
    """The settings a reader needs to reproduce the numbers (``runtime.pipeline``'s options)."""
    data = (
        f"{cfg.get('n_train')} training / {cfg.get('n_val')} validation synthetic images (generator version "
        f"{cfg.get('generator_version', '?')})"
        if not cfg.get("data")
        else f"data {cfg['data']}"
    )
    return (
        f"{data}, steps student {cfg.get('student_steps')} / teacher {cfg.get('teacher_steps')} / distillation "
        f"{cfg.get('distill_steps')}, batch {cfg.get('batch_size')}, importance {cfg.get('importance')}, seed "
        f"{cfg.get('seed')}"
    )


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def equal_latency_text(eq: dict[str, Any], student: str) -> str:
    """``at equal latency: ...`` within the tolerance; otherwise the ratio in words."""
    ratio, ref = eq["latency_ratio"], eq["reference"]
    tol = eq.get("tolerance", EQUAL_LATENCY_TOLERANCE)
    score = (
        f"scores {eq['delta_miou_points']:+.2f} mIoU points against it (one seed; `python -m runtime.frontier` "
        "measures this over seeds)"
    )
    who = f"`{ref}` (uncompressed, {eq['reference_steps']} steps)"
    if abs(ratio - 1.0) <= tol:
        return f"at equal latency: the distilled `{student}` takes {ratio:.3f}x the CPU time of {who} and {score}"
    words = f"{100 * (1 - ratio):.0f}% less" if ratio < 1 else f"{100 * (ratio - 1):.0f}% more"
    return (
        f"not at equal latency: the distilled `{student}` takes {ratio:.3f}x the CPU time of {who}, {words} CPU time "
        f"(more than the {100 * tol:.0f}% an equal-latency comparison allows), and {score}"
    )


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_markdown_table(report: dict[str, Any]) -> str:
    """The stage table, at most 120 characters a line (short headers: :data:`LEGEND` says what they mean)."""
    rows = _all_rows(report)
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
        f"device profile `{cfg['target']}`. Configuration: {_configuration(cfg)}. Latency: onnxruntime CPU, "
        f"{_threads(cfg.get('latency_threads', cfg['threads']))}, median process CPU "
        "time per run, all files timed interleaved (wall time on a shared machine moves too much to compare runs).",
        "",
        format_markdown_table(report),
        "",
        LEGEND,
        "",
    ]
    for line in report.get("warnings") or []:
        parts.append(f"- **warning**: {line}")
    for prec, doc in report["parity"].items():
        if doc:
            verdict = "PASS" if doc.get("passed") else "FAIL"
            parts.append(
                f"- parity {prec}: {verdict} (pixel agreement {_cell(doc.get('agreement'), '{:.2f}')} %, "
                f"mIoU drop {_cell(doc.get('miou_drop_points'), '{:.2f}')} points)"
            )
    eq = report.get("equal_latency")
    if eq:
        parts.append(f"- {equal_latency_text(eq, cfg['student'])}")
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
