"""Score a segmentation model on an LPCV-layout data set: what is scored is the file that ships.

``python -m runtime.evaluate model.onnx --data ROOT --split val [--batch-size N] [--json PATH] [--out-dir DIR]
[--limit N] [--compare other.onnx]``

Metrics (see :mod:`runtime.metrics` for the exact definitions): dataset-level mIoU (mean over classes present in the
ground truth or the prediction), the LPCV 2023 per-image mDice, pixel accuracy, per-class IoU and Dice with pixel
counts, the confusion matrix, and throughput. ``images_per_second`` covers the whole ``predict`` call (resize,
normalisation, model, logit upsampling, argmax) with images already decoded; ``model_seconds_per_image`` is the
model call alone.

Comparison mode scores two models on the same images and adds per-class deltas (B - A: the ``--compare`` model
minus the first; the table's headers say so) and the share of pixels where the two predictions agree (over all
pixels, ignored ground truth included).

A data root holding ``SYNTHETIC.json`` (written by ``models.synthetic``) is reported as synthetic, in the JSON
(``data.synthetic``) and in the printed table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fileformat.args import (
    Parser,
    check_output_file,
    check_output_folder,
    finite,
    int_in,
    non_negative_int,
    positive,
    positive_int,
)
from fileformat.cli import cli_main
from fileformat.errors import InputError, PassError
from fileformat.io import atomic_target, atomic_write_text, check_distinct
from models.constants import CLASS_NAMES, IGNORE_INDEX, PALETTE
from models.data import DataError, LoadedSample, ScanSummary, check_split, iter_samples
from models.synthetic import MARKER
from runtime.metrics import MetricAccumulator, SegmentationMetrics
from runtime.session import Segmenter

__all__ = ["EvalConfig", "compare", "data_info", "evaluate", "format_comparison", "format_table", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How to run an evaluation.

    Attributes:
        batch_size: images per model call (clipped to what the model accepts).
        limit: score only the first ``limit`` images (by name); None = all.
        num_overlays: prediction overlays drawn into ``overlays.png`` when an output folder is given.
        skip_invalid: skip bad samples (counted in the result's ``data.skipped``) instead of failing.
        progress: show a tqdm progress bar.
        ignore_index: ground-truth label excluded from scoring.
    """

    batch_size: int = 4
    limit: int | None = None
    num_overlays: int = 4
    skip_invalid: bool = False
    progress: bool = True
    ignore_index: int = IGNORE_INDEX


def data_info(root: Path | str, split: str) -> dict[str, Any]:
    """``{"root", "split", "synthetic"}`` plus the synthetic marker's seed/size/version where present."""
    root = Path(root)
    info: dict[str, Any] = {"root": str(root), "split": split, "synthetic": (root / MARKER).is_file()}
    if info["synthetic"]:
        try:
            marker = json.loads((root / MARKER).read_text())
            info["generator"] = {k: marker.get(k) for k in ("generator", "version", "seed", "size")}
        except (OSError, json.JSONDecodeError):
            logger.warning("%s is not readable JSON; still treating the data as synthetic", root / MARKER)
    return info


def _chunks(root: Path | str, split: str, config: EvalConfig, summary: ScanSummary) -> tuple[int, Any]:
    """Count the samples to score and return ``(count, iterator over lists of LoadedSample)``."""
    from models.data import find_samples

    total = len(find_samples(root, split, skip_invalid=config.skip_invalid))
    if config.limit is not None:
        total = min(total, config.limit)
    it = iter_samples(root, split, limit=config.limit, skip_invalid=config.skip_invalid, summary=summary)

    def gen() -> Any:
        chunk: list[LoadedSample] = []
        for s in it:
            chunk.append(s)
            if len(chunk) == max(1, config.batch_size):
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    return total, gen()


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False, file=sys.stderr)


def _result(
    metrics: SegmentationMetrics, segmenter: Segmenter, seconds: float, n: int, data: dict[str, Any]
) -> dict[str, Any]:
    out = metrics.to_dict()
    out.update(
        num_images=n,
        images_per_second=(n / seconds) if seconds > 0 else None,
        seconds_per_image=(seconds / n) if n else None,
        model_seconds_per_image=(segmenter.forward_seconds / segmenter.forward_images)
        if segmenter.forward_images
        else None,
        model=segmenter.describe(),
        data=data,
    )
    return out


def evaluate(
    segmenter: Segmenter,
    root: Path | str,
    split: str = "val",
    config: EvalConfig | None = None,
    out_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Score ``segmenter`` on ``root``/``split``; return the metrics dict (see the module docstring).

    With ``out_dir``, also writes ``per_class_iou.png`` and ``overlays.png`` there (not the JSON: the caller
    decides where that goes). Raises :class:`models.data.DataError` for a missing or bad data set.
    """
    config = config or EvalConfig()
    summary = ScanSummary(split)
    total, chunks = _chunks(root, split, config, summary)
    acc = MetricAccumulator(num_classes=segmenter.num_classes, ignore_index=config.ignore_index)
    acc.class_names = segmenter.class_names
    overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    seconds, n = 0.0, 0
    segmenter.forward_seconds, segmenter.forward_images = 0.0, 0
    with _progress(total, config.progress, segmenter.name) as bar:
        for chunk in chunks:
            images = [s.image for s in chunk]
            t0 = time.perf_counter()
            preds = segmenter.predict(images, config.batch_size)
            seconds += time.perf_counter() - t0
            for s, p in zip(chunk, preds):
                acc.update(s.mask, p)  # type: ignore[arg-type]
                if len(overlays) < config.num_overlays:
                    overlays.append((s.name, s.image, s.mask, p))  # type: ignore[arg-type]
            n += len(chunk)
            bar.update(len(chunk))
    if n == 0:
        raise DataError(Path(root), f"no sample of split {split!r} could be scored")
    data = data_info(root, split)
    data["skipped"] = dict(summary.skipped)
    result = _result(acc.result(), segmenter, seconds, n, data)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        title = f"{segmenter.name} on {split}{' (synthetic data)' if data['synthetic'] else ''}"
        plot_per_class_iou({segmenter.name: result}, out / "per_class_iou.png", title)
        plot_overlays(overlays, out / "overlays.png", segmenter.class_names)
        result["plots"] = [str(out / "per_class_iou.png"), str(out / "overlays.png")]
    return result


def compare(
    seg_a: Segmenter,
    seg_b: Segmenter,
    root: Path | str,
    split: str = "val",
    config: EvalConfig | None = None,
    out_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Score two segmenters on the same images; return ``{"a", "b", "delta", "agreement", "data"}``.

    ``delta`` holds B - A for mIoU, mDice, pixel accuracy and per class (IoU and Dice; None where either is
    undefined); ``agreement`` = #(pred_a == pred_b) / #pixels over all pixels of all scored images.
    """
    config = config or EvalConfig()
    if seg_a.num_classes != seg_b.num_classes:
        raise InputError(f"the models predict {seg_a.num_classes} and {seg_b.num_classes} classes")
    summary = ScanSummary(split)
    total, chunks = _chunks(root, split, config, summary)
    accs = [MetricAccumulator(num_classes=s.num_classes, ignore_index=config.ignore_index) for s in (seg_a, seg_b)]
    seconds = [0.0, 0.0]
    same = pixels = n = 0
    overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for s in (seg_a, seg_b):
        s.forward_seconds, s.forward_images = 0.0, 0
    with _progress(total, config.progress, f"{seg_a.name} vs {seg_b.name}") as bar:
        for chunk in chunks:
            images = [s.image for s in chunk]
            preds = []
            for k, seg in enumerate((seg_a, seg_b)):
                t0 = time.perf_counter()
                preds.append(seg.predict(images, config.batch_size))
                seconds[k] += time.perf_counter() - t0
            for j, s in enumerate(chunk):
                pa, pb = preds[0][j], preds[1][j]
                accs[0].update(s.mask, pa)  # type: ignore[arg-type]
                accs[1].update(s.mask, pb)  # type: ignore[arg-type]
                same += int(np.count_nonzero(pa == pb))
                pixels += pa.size
                if len(overlays) < config.num_overlays:
                    overlays.append((s.name, s.image, s.mask, pa, pb))  # type: ignore[arg-type]
            n += len(chunk)
            bar.update(len(chunk))
    if n == 0:
        raise DataError(Path(root), f"no sample of split {split!r} could be scored")
    data = data_info(root, split)
    data["skipped"] = dict(summary.skipped)
    ra = _result(accs[0].result(), seg_a, seconds[0], n, data)
    rb = _result(accs[1].result(), seg_b, seconds[1], n, data)

    def diff(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    delta = {k: diff(ra[k], rb[k]) for k in ("miou", "mdice", "pixel_accuracy")}
    delta["per_class"] = [
        {"name": ca["name"], "iou": diff(ca["iou"], cb["iou"]), "dice": diff(ca["dice"], cb["dice"])}
        for ca, cb in zip(ra["per_class"], rb["per_class"])
    ]
    result = {"a": ra, "b": rb, "delta": delta, "agreement": same / pixels if pixels else None, "data": data}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = (f"A: {seg_a.name}", f"B: {seg_b.name}")
        title = f"{split}{' (synthetic data)' if data['synthetic'] else ''}"
        plot_per_class_iou({names[0]: ra, names[1]: rb}, out / "per_class_iou.png", title)
        plot_overlays(
            overlays, out / "overlays.png", seg_a.class_names, labels=("A: " + seg_a.name, "B: " + seg_b.name)
        )
        result["plots"] = [str(out / "per_class_iou.png"), str(out / "overlays.png")]
    return result


# ----------------------------------------------------------------------------------------------------- output


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:6.2f}" if pct else f"{x:.4g}"


def _version(data: dict[str, Any]) -> str:
    version = (data.get("generator") or {}).get("version")
    return f" (generator version {version})" if version is not None else ""


def format_table(result: dict[str, Any]) -> str:
    """Per-class table and summary lines of one evaluation, as text."""
    data = result["data"]
    lines = [
        f"model {result['model']['name']} on {data['root']} [{data['split']}], {result['num_images']} images"
        + (f"  ** SYNTHETIC DATA{_version(data)} **" if data.get("synthetic") else ""),
        f"{'class':<28} {'IoU %':>7} {'Dice %':>7} {'GT px':>11} {'pred px':>11}",
    ]
    for c in result["per_class"]:
        lines.append(
            f"{c['name']:<28} {_fmt(c['iou']):>7} {_fmt(c['dice']):>7} {c['gt_pixels']:>11d} {c['pred_pixels']:>11d}"
        )
    ips = result.get("images_per_second")
    lines += [
        f"mIoU {_fmt(result['miou'])} %   mDice (per image) {_fmt(result['mdice'])} %   "
        f"pixel accuracy {_fmt(result['pixel_accuracy'])} %",
        f"throughput {ips:.2f} images/s (model {1000 * (result['model_seconds_per_image'] or 0):.1f} ms/image)"
        if ips
        else "throughput -",
    ]
    if data.get("skipped"):
        lines.append(f"skipped {len(data['skipped'])} invalid samples")
    return "\n".join(lines)


def format_comparison(result: dict[str, Any]) -> str:
    """Side-by-side table of a comparison, as text."""
    a, b, d = result["a"], result["b"], result["delta"]
    data = result["data"]
    lines = [
        f"A = {a['model']['name']}   B = {b['model']['name']}   on {data['root']} [{data['split']}], "
        f"{a['num_images']} images" + ("  ** SYNTHETIC DATA **" if data.get("synthetic") else ""),
        f"{'class':<28} {'IoU A':>7} {'IoU B':>7} {'B-A IoU':>7} {'Dice A':>7} {'Dice B':>7} {'B-A Dice':>8}",
    ]
    for ca, cb, cd in zip(a["per_class"], b["per_class"], d["per_class"]):
        lines.append(
            f"{ca['name']:<28} {_fmt(ca['iou']):>7} {_fmt(cb['iou']):>7} {_fmt(cd['iou']):>7} "
            f"{_fmt(ca['dice']):>7} {_fmt(cb['dice']):>7} {_fmt(cd['dice']):>8}"
        )
    for key, label in (("miou", "mIoU"), ("mdice", "mDice"), ("pixel_accuracy", "pixel acc")):
        lines.append(f"{label:<28} {_fmt(a[key]):>7} {_fmt(b[key]):>7} {_fmt(d[key]):>7}")
    lines.append(f"prediction agreement {_fmt(result['agreement'])} % of pixels")
    lines.append(
        f"throughput A {a['images_per_second'] or 0:.2f} images/s, B {b['images_per_second'] or 0:.2f} images/s"
    )
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_iou(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Grouped horizontal bars of per-class IoU, one group per class and one bar per result."""
    plt = _pyplot()
    names = [c["name"] for c in next(iter(results.values()))["per_class"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) * max(1, len(results)) + 1.5))
    height = 0.8 / len(results)
    y = np.arange(len(names))
    for k, (label, res) in enumerate(results.items()):
        vals = [np.nan if c["iou"] is None else 100 * c["iou"] for c in res["per_class"]]
        miou = res["miou"]
        ax.barh(y + k * height, vals, height, label=f"{label} (mIoU {_fmt(miou).strip()} %)")
    ax.set_yticks(y + height * (len(results) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU %")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _colourise(labels: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[IGNORE_INDEX] = (255, 255, 255)
    return lut[labels]


DISAGREE = (255, 0, 0)


def overlay_panels(
    name: str, image: np.ndarray, mask: np.ndarray, preds: Sequence[np.ndarray], labels: Sequence[str]
) -> list[tuple[np.ndarray, str]]:
    """The panels of one overlay row: image, ground truth, each prediction in the class palette and, for two
    predictions, where they disagree (red over the dimmed image)."""
    panels = [(image, name), (_colourise(mask, PALETTE), "ground truth")]
    panels += [(_colourise(p, PALETTE), label) for p, label in zip(preds, labels)]
    if len(preds) == 2:
        diff = preds[0] != preds[1]
        pic = (image.astype(np.float32) * 0.4).astype(np.uint8)
        pic[diff] = DISAGREE
        panels.append((pic, f"disagreement ({100 * diff.mean():.1f}% of pixels)"))
    return panels


def plot_overlays(
    overlays: Sequence[tuple[Any, ...]],
    path: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    labels: Sequence[str] = ("prediction",),
) -> None:
    """Rows of (image | ground truth | prediction(s) [| disagreement]) in the class palette (ignored pixels
    white), with a legend. Each row is ``(name, image, mask, pred, ...)``, one prediction per label."""
    if not overlays:
        return
    plt = _pyplot()
    from matplotlib.patches import Patch

    rows = [overlay_panels(o[0], o[1], o[2], o[3:], labels) for o in overlays]
    cols = len(rows[0])
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3 * len(rows) + 0.8), squeeze=False)
    for row, panels in enumerate(rows):
        for col, (pic, label) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(pic, interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    handles = [Patch(color=np.asarray(PALETTE[i]) / 255, label=n) for i, n in enumerate(class_names[: len(PALETTE)])]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7)
    fig.tight_layout(rect=(0, 0.8 / (3 * len(overlays) + 0.8) + 0.02, 1, 1))
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig: Any, path: Path) -> None:
    with atomic_target(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)


def write_json(obj: dict[str, Any], path: Path | str) -> None:
    """Write ``obj`` as indented JSON atomically (:func:`fileformat.io.atomic_write_text`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


# -------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m runtime.evaluate",
        description="Score an ONNX segmentation model (mIoU, per-image mDice, per-class IoU/Dice) with onnxruntime.",
    )
    p.add_argument("model", type=Path, help="model.onnx to score")
    p.add_argument("--data", type=Path, required=True, help="data root in the LPCV layout (IMG/, GT/)")
    p.add_argument("--split", default="val", help="split scored (IMG/SPLIT, GT/SPLIT)")
    p.add_argument(
        "--compare", type=Path, metavar="OTHER.onnx", help="score a second model B and compare (deltas: B - A)"
    )
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per onnxruntime call")
    p.add_argument("--limit", type=positive_int, help="score only the first N images (none given: all)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="write per_class_iou.png and overlays.png here")
    p.add_argument(
        "--num-overlays", type=non_negative_int, default=4, help="images drawn in overlays.png (with --out-dir)"
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip bad samples instead of failing")
    p.add_argument("--providers", help="comma-separated onnxruntime providers: cpu, cuda, tensorrt (default cpu)")
    p.add_argument(
        "--threads", type=positive_int, help="onnxruntime intra-op threads (none given: onnxruntime's choice)"
    )
    p.add_argument(
        "--input-size",
        type=int_in(8, 8192, "pixels"),
        nargs=2,
        metavar=("H", "W"),
        help="override the model input size (none: the file's)",
    )
    p.add_argument(
        "--mean", type=finite, nargs=3, help="override the normalisation mean (RGB in [0, 1]; none: the file's)"
    )
    p.add_argument("--std", type=positive, nargs=3, help="override the normalisation std (each > 0; none: the file's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks on errors")
    return p


@cli_main("python -m runtime.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 model or data cannot be used, 2 usage error). Every
    option, path and the split are checked before onnxruntime is imported."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    check_distinct([args.model, args.compare], [("--json", args.json), ("--out-dir", args.out_dir)])
    inputs = [("--data", args.data)]
    if args.out_dir is not None:
        check_output_folder("--out-dir", args.out_dir, inputs)
    check_output_file("--json", args.json, inputs)
    for option, m in (("model", args.model), ("--compare", args.compare)):
        if m is not None and not m.is_file():
            raise PassError(f"{option} {m}: model file not found.")
    check_split(args.data, args.split, "--split")
    from runtime.session import OnnxSegmenter

    kwargs: dict[str, Any] = {
        "providers": args.providers.split(",") if args.providers else None,
        "threads": args.threads,
        "input_size": tuple(args.input_size) if args.input_size else None,
        "mean": args.mean,
        "std": args.std,
    }
    config = EvalConfig(
        batch_size=args.batch_size,
        limit=args.limit,
        num_overlays=args.num_overlays,
        skip_invalid=args.skip_invalid,
        progress=not args.no_progress,
    )
    seg_a = OnnxSegmenter(args.model, **kwargs)
    if args.compare is None:
        result = evaluate(seg_a, args.data, args.split, config, args.out_dir)
        text = format_table(result)
    else:
        seg_b = OnnxSegmenter(args.compare, **kwargs)
        result = compare(seg_a, seg_b, args.data, args.split, config, args.out_dir)
        text = format_comparison(result)
    result["config"] = asdict(config)
    print(text)
    if args.json:
        write_json(result, args.json)
        print(f"metrics written to {args.json}")
    if args.out_dir:
        print(f"plots written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
