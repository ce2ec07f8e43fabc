"""The old home of calibration-image reading, now :mod:`models.calib` (below ``passes/``, which reads calibration
images). Kept while ``passes.compress`` and ``bench/bench_accuracy.py`` still import this path; remove it once they
import :mod:`models.calib`."""

from __future__ import annotations

from models.calib import (
    NOISE,
    SYNTHETIC,
    CalibrationDataError,
    InputSpec,
    calibration_feeds,
    image_feeds,
    input_spec,
    list_images,
    noise_feeds,
    resolve_data,
)

__all__ = [
    "NOISE",
    "SYNTHETIC",
    "CalibrationDataError",
    "InputSpec",
    "calibration_feeds",
    "image_feeds",
    "input_spec",
    "list_images",
    "noise_feeds",
    "resolve_data",
]
