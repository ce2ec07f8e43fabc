"""Parity of a precision change: compare a candidate model with its reference on real images, judged by the task.

``python -m runtime.parity reference.onnx candidate.onnx --data ROOT [--split val] [--limit N]
[--min-agreement 99.5] [--max-miou-drop 0.5] [--check auto|agreement|miou|both] [--save-dir DIR] [--json PATH]``

Both models run in onnxruntime through Polygraphy's runners on the same images (resized and normalised as
:class:`runtime.session.OnnxSegmenter` does; the candidate gets its own input dtype), and Polygraphy's comparator
(``SimpleCompareFunc``) gives, per output and image, the max / mean / median / quantile absolute and relative
errors: ``|c - r|`` and ``|c - r| / |r|``. Per output the report takes the max of the maxima, the mean of the means
(images have equal size), the median of the medians and the max of the quantiles.

The verdict is judged by the task, not by a tolerance alone (a 1e-5 tolerance calls every FP16 model broken):

* **pixel agreement**: logits upsampled bilinearly to the mask size, ``argmax`` over classes; agreement =
  #(class_ref == class_cand) / #pixels over all pixels of all images. Must be ``>= --min-agreement`` percent.
* **mIoU drop**: dataset-level mIoU of each model against the ground truth (:mod:`runtime.metrics`);
  ``100 * (mIoU_ref - mIoU_cand)`` must be ``<= --max-miou-drop`` points.

``--check auto`` applies the mIoU-drop rule to a quantized candidate (it holds QuantizeLinear/DequantizeLinear)
and pixel agreement to anything else (FP16, a re-export); ``both`` applies both; ``--require-numeric`` adds
Polygraphy's own pass/fail at ``--atol``/``--rtol`` on ``--check-error-stat``. Exit 0 when the verdict passes,
1 when it fails or the models/data cannot be used, 2 on a usage error.

The first ``--save-count`` inputs (as fed to the candidate) and the reference outputs are written in Polygraphy's
JSON format (``inputs.json``, ``ref_outputs.json``, ``cand_outputs.json``; in ``<candidate>.parity/`` unless
``--save-dir`` says where) so the numeric comparison can be rerun from the shell; files of an earlier run there are
replaced only with ``--force``::

    polygraphy run candidate.onnx --onnxrt --load-inputs DIR/inputs.json --load-outputs DIR/ref_outputs.json \\
        --atol 0.01 --rtol 0.01 --check-error-stat quantile --error-quantile 0.99
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fileformat.args import (
    Parser,
    check_output_file,
    check_output_folder,
    fraction,
    non_negative,
    non_negative_int,
    percent,
    positive_int,
)
from fileformat.cli import cli_main
from fileformat.errors import InputError, MissingInputError, PassError, UsageError
from fileformat.io import atomic_target, check_distinct
from fileformat.session import SessionConfig, load_session
from models.constants import IGNORE_INDEX
from models.data import DataError, check_split, iter_samples
from runtime.metrics import MetricAccumulator
from runtime.session import resize_bilinear

if TYPE_CHECKING:  # loaded when the models are: --help and usage errors answer without them
    import onnx

    from models.calib import InputSpec

__all__ = ["ParityConfig", "ParityResult", "compare_models", "format_result", "main", "repro_command"]

logger = logging.getLogger(__name__)

CHECKS = ("auto", "agreement", "miou", "both")
_STATS = ("max_absdiff", "max_reldiff", "mean_absdiff", "mean_reldiff", "median_absdiff", "median_reldiff")


@dataclass(frozen=True)
class ParityConfig:
    """Thresholds and options of a parity check.

    Attributes:
        min_agreement: pixel agreement required, percent.
        max_miou_drop: mIoU drop allowed, points (percent).
        check: which rule decides: ``auto`` (mIoU for quantized candidates, agreement otherwise), ``agreement``,
            ``miou`` or ``both``.
        atol, rtol, check_error_stat, error_quantile: Polygraphy's numeric comparison (informational unless
            ``require_numeric``).
        require_numeric: also require Polygraphy's numeric comparison to pass.
        split, limit: images scored (the first ``limit`` of ``split`` by name; None = all).
        save_count: inputs/outputs saved as Polygraphy JSON (the first ones).
        progress: tqdm progress bar.
    """

    min_agreement: float = 99.5
    max_miou_drop: float = 0.5
    check: str = "auto"
    atol: float = 1e-2
    rtol: float = 1e-2
    check_error_stat: str = "quantile"
    error_quantile: float = 0.99
    require_numeric: bool = False
    split: str = "val"
    limit: int | None = None
    save_count: int = 4
    progress: bool = True


@dataclass
class ParityResult:
    """Outcome of :func:`compare_models` (``to_dict`` for JSON)."""

    reference: str
    candidate: str
    images: int
    pixels: int
    agreement: float
    miou_reference: float | None
    miou_candidate: float | None
    miou_drop_points: float | None
    outputs: dict[str, dict[str, float | None]]
    numeric_passed: bool
    checks: dict[str, dict[str, Any]]
    passed: bool
    data: dict[str, Any] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_quantized(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors: not a model
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}).") from None


def _spec(path: Path) -> InputSpec:
    from models.calib import CalibrationDataError, input_spec

    try:
        return input_spec(_load(path))
    except CalibrationDataError as exc:
        raise InputError(f"{path}: {exc}") from None


def _classes(path: Path) -> int | None:
    """The class count of a segmentation model's first output ``[N, classes, H, W]``, when static."""
    out = _load(path).graph.output[0].type.tensor_type.shape.dim
    return out[1].dim_value if len(out) == 4 and out[1].HasField("dim_value") else None


def repro_command(candidate: Path | str, save_dir: Path | str, config: ParityConfig) -> str:
    """The ``polygraphy run`` command that reruns the saved numeric comparison."""
    d = Path(save_dir)
    return (
        f"polygraphy run {candidate} --onnxrt --load-inputs {d / 'inputs.json'} --load-outputs "
        f"{d / 'ref_outputs.json'} --atol {config.atol:g} --rtol {config.rtol:g} "
        f"--check-error-stat {config.check_error_stat} --error-quantile {config.error_quantile:g}"
    )


def _quiet_polygraphy(verbose: bool) -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL


def _cpu_count() -> int:
    """The CPUs this process may run on (what Polygraphy's session loader gives onnxruntime)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return 1


#: the sessions Polygraphy's ``SessionFromOnnx`` built for parity before the one loader: the CPU, as many intra- and
#: inter-op threads as usable CPUs, onnxruntime's defaults otherwise
_SESSION = SessionConfig(threads=_cpu_count(), inter_threads=_cpu_count(), spinning=True, log_severity=None)


@contextlib.contextmanager
def _runtime_errors() -> Iterator[None]:
    """onnxruntime's and Polygraphy's own exceptions (models they cannot run) as :class:`InputError`."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("onnxruntime", "polygraphy"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot run the models: {first}") from exc


def _checked_specs(ref_path: Path, cand_path: Path, config: ParityConfig) -> tuple[InputSpec, InputSpec]:
    """The two models' input specs, after checking the check's name, that both files exist, and that they take the
    same input size and predict the same classes."""
    if config.check not in CHECKS:
        raise UsageError(f"unknown check {config.check!r}; choose one of {', '.join(CHECKS)}")
    for p in (ref_path, cand_path):
        if not p.is_file():
            raise MissingInputError(f"model file not found: {p}")
    ref_spec, cand_spec = _spec(ref_path), _spec(cand_path)
    if ref_spec.size != cand_spec.size:
        raise InputError(f"the models take different input sizes: {ref_spec.size} and {cand_spec.size}")
    n_ref, n_cand = _classes(ref_path), _classes(cand_path)
    if n_ref and n_cand and n_ref != n_cand:
        raise InputError(
            f"the models predict different class counts ({n_ref} and {n_cand}); parity compares a model with its "
            "own compressed or converted version."
        )
    return ref_spec, cand_spec


def _prediction(outputs: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """The class map (H x W) of the first output (the logits), resized to the image's ``size``."""
    logits = np.asarray(outputs[next(iter(outputs))], dtype=np.float32)[0]  # C x h x w
    return np.argmax(resize_bilinear(logits, size), axis=0).astype(np.uint8)


def _error_stats(entry: dict[str, list[float]], quantile: float) -> dict[str, float | None]:
    """One output's error statistics over the images (the worst of the maxima and quantiles, the mean of means)."""

    def agg(key: str, fn: Any) -> float | None:
        return float(fn(entry[key])) if entry.get(key) else None

    return {
        "max_abs": agg("max_absdiff", np.max),
        "mean_abs": agg("mean_absdiff", np.mean),
        "median_abs": agg("median_absdiff", np.median),
        f"p{100 * quantile:g}_abs": agg("quantile_absdiff", np.max),
        "max_rel": agg("max_reldiff", np.max),
        "mean_rel": agg("mean_reldiff", np.mean),
        "median_rel": agg("median_reldiff", np.median),
        f"p{100 * quantile:g}_rel": agg("quantile_reldiff", np.max),
    }


def _checks(
    config: ParityConfig, quantized: bool, agreement: float, drop: float | None, numeric_ok: bool, data: Path
) -> dict[str, dict[str, Any]]:
    """The checks ``config.check`` names (``auto``: mIoU for a quantized candidate, pixel agreement otherwise),
    and the numeric one where required, each with its value, threshold, rule and verdict."""
    check = config.check
    if check == "auto":
        check = "miou" if quantized else "agreement"
    checks: dict[str, dict[str, Any]] = {}
    if check in ("agreement", "both"):
        checks["agreement"] = {
            "value": agreement,
            "threshold": config.min_agreement,
            "rule": f"pixel agreement >= {config.min_agreement:g} %",
            "passed": agreement >= config.min_agreement,
        }
    if check in ("miou", "both"):
        if drop is None:
            raise DataError(data, "the mIoU check needs ground-truth masks (GT/<split>/) for every image")
        checks["miou_drop"] = {
            "value": drop,
            "threshold": config.max_miou_drop,
            "rule": f"mIoU drop <= {config.max_miou_drop:g} points",
            "passed": drop <= config.max_miou_drop,
        }
    if config.require_numeric:
        checks["numeric"] = {
            "value": None,
            "threshold": None,
            "rule": f"polygraphy {config.check_error_stat} error within atol {config.atol:g} or rtol {config.rtol:g}",
            "passed": numeric_ok,
        }
    return checks


def _save_repro(
    d: Path, inputs: list[dict[str, np.ndarray]], ref: list[Any], cand: list[Any], cand_path: Path, config: ParityConfig
) -> dict[str, str]:
    """The first images' inputs and both models' outputs as Polygraphy JSON under ``d``, and the command that reruns
    the comparison."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    d.mkdir(parents=True, exist_ok=True)
    with atomic_target(d / "inputs.json", suffix=".json") as tmp:
        save_json(inputs, tmp)
    with atomic_target(d / "ref_outputs.json", suffix=".json") as tmp:
        RunResults([("reference", ref)]).save(tmp)
    with atomic_target(d / "cand_outputs.json", suffix=".json") as tmp:
        RunResults([("candidate", cand)]).save(tmp)
    return {
        "inputs": str(d / "inputs.json"),
        "ref_outputs": str(d / "ref_outputs.json"),
        "cand_outputs": str(d / "cand_outputs.json"),
        "command": repro_command(cand_path, d, config),
    }


def compare_models(
    reference: Path | str,
    candidate: Path | str,
    data: Path | str,
    config: ParityConfig | None = None,
    save_dir: Path | str | None = None,
) -> ParityResult:
    """Run both models on the images of ``data`` (LPCV layout) and judge the candidate; see the module docstring.

    Raises:
        DataError: the data folder is missing or empty.
        InputError: a model is unusable, or the two models differ in input size or output names; a model onnxruntime
            cannot run ("cannot run the models: " and the first line of its message).
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.comparator.compare import SimpleCompareFunc
    from tqdm import tqdm

    config = config or ParityConfig()
    ref_path, cand_path = Path(reference), Path(candidate)
    ref_spec, cand_spec = _checked_specs(ref_path, cand_path, config)
    _quiet_polygraphy(logger.isEnabledFor(logging.DEBUG))
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    compare = SimpleCompareFunc(
        atol=config.atol,
        rtol=config.rtol,
        check_error_stat=config.check_error_stat,
        error_quantile=config.error_quantile,
    )
    samples = list(iter_samples(data, config.split, limit=config.limit, require_masks=False))
    if not samples:
        raise DataError(Path(data), f"no image in split {config.split!r}")
    has_masks = all(s.mask is not None for s in samples)
    accs = [MetricAccumulator(ignore_index=IGNORE_INDEX), MetricAccumulator(ignore_index=IGNORE_INDEX)]
    same = pixels = 0
    stats: dict[str, dict[str, list[float]]] = {}
    numeric_ok = True
    saved_inputs: list[dict[str, np.ndarray]] = []
    saved_ref: list[Any] = []
    saved_cand: list[Any] = []
    ref_runner = OnnxrtRunner(lambda: load_session(ref_path, _SESSION), name="reference")
    cand_runner = OnnxrtRunner(lambda: load_session(cand_path, _SESSION), name="candidate")
    with _runtime_errors(), ref_runner, cand_runner:
        for k, sample in enumerate(
            tqdm(samples, desc="parity", unit="img", disable=not config.progress, leave=False, file=sys.stderr)
        ):
            feed_ref = {ref_spec.name: ref_spec.to_input(sample.image)}  # 1 x 3 x H x W
            feed_cand = {cand_spec.name: feed_ref[ref_spec.name].astype(cand_spec.dtype)}
            out_ref = ref_runner.infer(feed_ref)
            it_ref = IterationResult(out_ref, ref_runner.last_inference_time(), "reference")
            out_cand = cand_runner.infer(feed_cand)
            it_cand = IterationResult(out_cand, cand_runner.last_inference_time(), "candidate")
            if list(out_ref) != list(out_cand):
                raise InputError(f"the models have different outputs: {list(out_ref)} and {list(out_cand)}")
            run = RunResults([("reference", [it_ref]), ("candidate", [it_cand])])
            accuracy = Comparator.compare_accuracy(run, compare_func=compare)[0]
            for name, res in accuracy[("reference", "candidate")][0].items():
                numeric_ok &= bool(res)
                entry = stats.setdefault(name, {})
                for key in (*_STATS, "quantile_absdiff", "quantile_reldiff"):
                    value = getattr(res, key, None)
                    if value is not None:
                        entry.setdefault(key, []).append(float(value))
            if k < config.save_count and save_dir is not None:
                saved_inputs.append(feed_cand)
                saved_ref.append(it_ref)
                saved_cand.append(it_cand)
            preds = [_prediction(out, sample.image.shape[:2]) for out in (out_ref, out_cand)]
            same += int(np.count_nonzero(preds[0] == preds[1]))
            pixels += preds[0].size
            if has_masks:
                accs[0].update(sample.mask, preds[0])  # type: ignore[arg-type]
                accs[1].update(sample.mask, preds[1])  # type: ignore[arg-type]

    outputs = {name: _error_stats(entry, config.error_quantile) for name, entry in stats.items()}
    agreement = 100.0 * same / pixels
    miou_ref = miou_cand = drop = None
    if has_masks:
        r, c = accs[0].result().miou, accs[1].result().miou
        miou_ref = None if np.isnan(r) else 100.0 * r
        miou_cand = None if np.isnan(c) else 100.0 * c
        if miou_ref is not None and miou_cand is not None:
            drop = miou_ref - miou_cand

    quantized = config.check == "auto" and _is_quantized(cand_path)
    checks = _checks(config, quantized, agreement, drop, numeric_ok, Path(data))
    saved: dict[str, str] = {}
    if save_dir is not None and saved_inputs:
        saved = _save_repro(Path(save_dir), saved_inputs, saved_ref, saved_cand, cand_path, config)
    from runtime.evaluate import data_info

    return ParityResult(
        reference=str(ref_path),
        candidate=str(cand_path),
        images=len(samples),
        pixels=pixels,
        agreement=agreement,
        miou_reference=miou_ref,
        miou_candidate=miou_cand,
        miou_drop_points=drop,
        outputs=outputs,
        numeric_passed=numeric_ok,
        checks=checks,
        passed=all(c["passed"] for c in checks.values()),
        data=data_info(data, config.split),
        saved=saved,
        config=asdict(config),
    )


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_result(result: ParityResult) -> str:
    """A human-readable summary: error statistics per output, task metrics, each rule and the verdict."""
    lines = [
        f"reference {result.reference}",
        f"candidate {result.candidate}",
        f"{result.images} images of {result.data.get('root')} [{result.data.get('split')}]"
        + ("  ** SYNTHETIC DATA **" if result.data.get("synthetic") else ""),
    ]
    for name, s in result.outputs.items():
        q = [k for k in s if k.startswith("p") and k.endswith("_abs")]
        qr = [k for k in s if k.startswith("p") and k.endswith("_rel")]
        lines.append(
            f"output {name}: abs err max {s['max_abs']:.4g} mean {s['mean_abs']:.4g} median {s['median_abs']:.4g}"
            + (f" {q[0][:-4]} {s[q[0]]:.4g}" if q and s[q[0]] is not None else "")
            + f" | rel err max {s['max_rel']:.4g} mean {s['mean_rel']:.4g} median {s['median_rel']:.4g}"
            + (f" {qr[0][:-4]} {s[qr[0]]:.4g}" if qr and s[qr[0]] is not None else "")
        )
    lines.append(f"pixel agreement {result.agreement:.3f} % of {result.pixels} pixels")
    lines.append(
        f"mIoU reference {_f(result.miou_reference, 2)} %, candidate {_f(result.miou_candidate, 2)} %, "
        f"drop {_f(result.miou_drop_points, 2)} points"
    )
    lines.append(f"polygraphy numeric check: {'passed' if result.numeric_passed else 'failed'} (informational)")
    for name, c in result.checks.items():
        value = "" if c["value"] is None else f" (measured {c['value']:.3f})"
        lines.append(f"check {name}: {c['rule']}{value}: {'PASS' if c['passed'] else 'FAIL'}")
    lines.append(f"verdict: {'PASS' if result.passed else 'FAIL'}")
    if result.saved:
        lines.append(f"rerun the numeric comparison: {result.saved['command']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- CLI


SAVED_FILES = ("inputs.json", "ref_outputs.json", "cand_outputs.json")


def _parser() -> argparse.ArgumentParser:
    d = ParityConfig()
    p = Parser(
        prog="python -m runtime.parity",
        description="Compare a candidate ONNX model with its reference on real images (Polygraphy comparator, "
        "pixel agreement, mIoU) and give a verdict.",
    )
    p.add_argument("reference", type=Path, help="reference model (e.g. the FP32 export)")
    p.add_argument("candidate", type=Path, help="candidate model (e.g. the FP16 or INT8 file)")
    p.add_argument("--data", type=Path, required=True, help="data root in the LPCV layout (IMG/, GT/)")
    p.add_argument("--split", default=d.split, help="split compared on (IMG/SPLIT, GT/SPLIT)")
    p.add_argument("--limit", type=positive_int, help="use only the first N images (none given: all)")
    p.add_argument(
        "--min-agreement", type=percent, default=d.min_agreement, help="pixel agreement required, percent (0-100)"
    )
    p.add_argument("--max-miou-drop", type=percent, default=d.max_miou_drop, help="mIoU drop allowed, points (0-100)")
    p.add_argument(
        "--check",
        choices=CHECKS,
        default=d.check,
        help="which rule decides: auto = mIoU for quantized candidates, agreement otherwise",
    )
    p.add_argument(
        "--atol", type=non_negative, default=d.atol, help="Polygraphy's absolute tolerance on the logits (>= 0)"
    )
    p.add_argument(
        "--rtol", type=non_negative, default=d.rtol, help="Polygraphy's relative tolerance on the logits (>= 0)"
    )
    p.add_argument(
        "--check-error-stat",
        choices=("max", "mean", "median", "quantile", "elemwise"),
        default=d.check_error_stat,
        help="Polygraphy's error statistic compared with the tolerances",
    )
    p.add_argument(
        "--error-quantile",
        type=fraction,
        default=d.error_quantile,
        help="the quantile of --check-error-stat quantile, in (0, 1]",
    )
    p.add_argument("--require-numeric", action="store_true", help="the numeric check must pass too")
    p.add_argument(
        "--save-dir", type=Path, help="where to write the Polygraphy JSON files (default: <candidate>.parity/)"
    )
    p.add_argument("--save-count", type=non_negative_int, default=d.save_count, help="images saved as JSON")
    p.add_argument("--no-save", action="store_true", help="write no Polygraphy JSON files")
    p.add_argument("--force", action="store_true", help="replace the JSON files an earlier run saved there")
    p.add_argument("--json", type=Path, help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks on errors")
    return p


@cli_main("python -m runtime.parity")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 verdict passed, 1 failed (or unusable models/data), 2 usage error. Every option, path and
    the split are checked before a model is loaded."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    config = ParityConfig(
        min_agreement=args.min_agreement,
        max_miou_drop=args.max_miou_drop,
        check=args.check,
        atol=args.atol,
        rtol=args.rtol,
        check_error_stat=args.check_error_stat,
        error_quantile=args.error_quantile,
        require_numeric=args.require_numeric,
        split=args.split,
        limit=args.limit,
        save_count=args.save_count,
        progress=not args.no_progress,
    )
    save_dir = None if args.no_save else (args.save_dir or args.candidate.with_name(args.candidate.name + ".parity"))
    check_distinct([args.reference, args.candidate], [("--json", args.json), ("--save-dir", save_dir)])
    inputs = [("--data", args.data)]
    if save_dir is not None:
        check_output_folder("--save-dir", save_dir, inputs)
        earlier = [f for f in SAVED_FILES if (Path(save_dir) / f).exists()]
        if earlier and not args.force:
            raise UsageError(
                f"--save-dir {save_dir} holds an earlier run's {', '.join(earlier)}; give --force to replace them, "
                "--save-dir for another folder, or --no-save."
            )
    check_output_file("--json", args.json, inputs)
    for option, m in (("reference", args.reference), ("candidate", args.candidate)):
        if not m.is_file():
            raise PassError(f"{option} {m}: model file not found.")
    check_split(args.data, args.split, "--split", require_masks=False)  # agreement needs no masks
    result = compare_models(args.reference, args.candidate, args.data, config, save_dir)
    print(format_result(result))
    if args.json:
        from runtime.evaluate import write_json

        write_json(result.to_dict(), args.json)
        print(f"result written to {args.json}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
