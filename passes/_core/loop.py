"""The latency loop: correct a plan against measurement until the measured latency ratio lands in its band.

The latency table (:mod:`passes._core.latency`) predicts each node's time; what it cannot see (memory layout
changes, cache effects, kernels that do not scale linearly) is corrected with measurement. Each attempt plans for an
*asked* target, cuts, and times the cut interleaved against the input (or a reference), CPU time at one thread.
The first asks for the middle of the band a measurement of 1% standard error would have (:func:`first_asked`: a
prediction within a few % then lands inside at once; asking for the target itself lands a true prediction above a
ceiling's band, which keeps two standard errors under the target). The next asked target comes from
:func:`next_asked`: until cuts on both sides of the band were measured, the table's bias on the last cut is taken
off the band's middle; then the bracket of asked targets is narrowed by interpolation clamped to its middle half, so
it shrinks by at least a quarter a step and the loop lands from any first plan. A timing stops early once its cut
is clearly outside the band (:func:`far_outside`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import onnx

from passes._core import latency as latency_model

log = logging.getLogger(__name__)


def latency_band(target: float, se: float, tolerance: float, ceiling: bool) -> tuple[float, float]:
    """The band ``[low, high]`` a measured latency ratio must land in.

    A match (``--target-latency-of``) lands in ``[target * (1 - tolerance), target]``. A ``--target-latency`` is a
    ceiling that another measurement of the written file (a benchmark, the user's) must find under it too, and a
    cut far under it throws away accuracy the user asked to keep: the band keeps twice the measurement's standard
    error from both ends, ``[target * (1 - tolerance) + 2 se, target - 2 se]``. Where the noise leaves that band
    under 2% of the target, the low end gives way (never the ceiling)."""
    if not ceiling:
        return target * (1.0 - tolerance), target
    high = target - 2.0 * se
    low = target * (1.0 - tolerance) + 2.0 * se
    if high - low < 0.02 * target:
        low = min(target * (1.0 - tolerance), high - 0.02 * target)
    return low, high


@dataclass
class Attempt:
    """One measured plan of the loop: the target it was planned for, the table's estimate, what it wrote, the
    measured ratio and its standard error, and its band."""

    asked: float
    predicted: float
    plan: Any
    model: onnx.ModelProto
    steps: list[Any]
    timing: latency_model.PairTiming
    ratio: float  # measured, against the input (scaled by the target for a reference match)
    se: float
    band: tuple[float, float]
    ceiling: bool  # a --target-latency (a ceiling), not a --target-latency-of (a match)

    @property
    def inside(self) -> bool:
        return self.band[0] <= self.ratio <= self.band[1]

    def miss(self) -> float:
        """0 inside the band; under it, how far (relative); over it, 1 + how far: any time under the ceiling is
        better than one over it."""
        low, high = self.band
        if self.ratio > high:
            return self.ratio / high
        return max(0.0, (low - self.ratio) / low)

    def row(self) -> dict[str, Any]:
        """The attempt for the report: asked target, the table's estimate, measured ratio, its standard error,
        band and rounds."""
        return {
            "asked": round(self.asked, 4),
            "predicted": round(self.predicted, 4),
            "measured": round(self.ratio, 4),
            "se": round(self.se, 4),
            "band": [round(self.band[0], 4), round(self.band[1], 4)],
            "rounds": self.timing.rounds,
        }


def far_outside(ratio: float, se: float, target: float, tolerance: float, ceiling: bool) -> bool:
    """Whether a measurement is outside its band by more than three standard errors: the plan will be corrected
    whatever more rounds say, so the measurement can stop there."""
    low, high = latency_band(target, se, tolerance, ceiling)
    return ratio > high + 3 * se or ratio < low - 3 * se


#: the relative standard error a measurement stops at (passes._core.latency.measure_pair's ``rel_se``)
EXPECTED_SE = 0.01


def first_asked(target: float, tolerance: float, ceiling: bool) -> float:
    """The target the first plan asks for: the middle of the band of a measurement with :data:`EXPECTED_SE`."""
    return sum(latency_band(target, EXPECTED_SE * target, tolerance, ceiling)) / 2


def next_asked(attempts: Sequence[Attempt]) -> float:
    """The target to plan for next (see the module docstring)."""
    last = attempts[-1]
    aim = sum(last.band) / 2
    under = [a for a in attempts if a.ratio < a.band[0]]
    over = [a for a in attempts if a.ratio > a.band[1]]
    if under and over:
        lo = max(under, key=lambda a: a.asked)
        hi = min(over, key=lambda a: a.asked)
        if hi.asked > lo.asked:
            t = (aim - lo.ratio) / (hi.ratio - lo.ratio) if hi.ratio > lo.ratio else 0.5
            return lo.asked + min(max(t, 0.25), 0.75) * (hi.asked - lo.asked)
    return min(1.0, max(1e-3, last.asked * aim / max(last.ratio, 1e-6)))


@dataclass
class LoopConfig:
    """What the loop holds a cut to: ``target`` (a ceiling, or with ``reference`` a match of that model's speed),
    ``tolerance`` (None: 0.1 for a ceiling, 0.05 for a match), at most ``retries`` corrections, timed at
    ``threads`` onnxruntime threads."""

    target: float
    tolerance: float | None = None
    retries: int = 6
    threads: int = 1
    reference: onnx.ModelProto | None = None

    @property
    def ceiling(self) -> bool:
        return self.reference is None

    @property
    def band_tolerance(self) -> float:
        return self.tolerance if self.tolerance is not None else (0.1 if self.ceiling else 0.05)

    @property
    def first_asked(self) -> float:
        """What the first plan asks for (:func:`first_asked`)."""
        return first_asked(self.target, self.band_tolerance, self.ceiling)


#: ``plan_for(asked target) -> (plan, model, steps, predicted ratio, key)``: a plan, what the passes wrote for it,
#: the table's estimate, and a key that is equal for equal cuts
Planner = Callable[[float], tuple[Any, onnx.ModelProto, list[Any], float, Any]]


def close_loop(against: onnx.ModelProto, plan_for: Planner, config: LoopConfig, notes: list[str]) -> list[Attempt]:
    """Plan for :attr:`LoopConfig.first_asked`, measure the cut against ``against`` (the input, or the reference
    itself for a match: a chain of two measured ratios misses it by more than the band) and correct the plan until
    one lands in :func:`latency_band` (at most ``config.retries`` corrections); every attempt, in order. The
    caller keeps the attempt inside the band, else the closest under the ceiling, else the closest over it
    (:meth:`Attempt.miss`). For a match, ratios are scaled by the target (the reference's ratio to the input), so
    every attempt reads against the input."""
    target, ceiling = config.target, config.ceiling
    tolerance = config.band_tolerance
    scale = 1.0 if ceiling else target
    measured: dict[Any, Attempt] = {}
    attempts: list[Attempt] = []
    asked = config.first_asked
    for attempt in range(config.retries + 1):
        if attempt:
            asked = next_asked(attempts)
        plan, model, steps, predicted, key = plan_for(asked)
        if key in measured:  # the same cut again: its measurement stands (the bracket still narrows)
            a = replace(measured[key], asked=asked)
        else:
            timing = latency_model.measure_pair(
                against,
                model,
                threads=config.threads,
                min_seconds=1.0,
                desc=f"latency {attempt + 1}/{config.retries + 1}: timing the cut"
                + ("" if ceiling else " against the reference"),
                settled=lambda m, se: far_outside(scale * m, scale * se, target, tolerance, ceiling),
            )
            ratio, se = scale * timing.ratio, scale * timing.se
            band = latency_band(target, se, tolerance, ceiling)
            a = measured[key] = Attempt(asked, predicted, plan, model, steps, timing, ratio, se, band, ceiling)
        attempts.append(a)
        log.info("latency attempt %d: %s", attempt + 1, a.row())
        if a.inside:
            break
        if attempt < config.retries:
            notes.append(
                f"latency: planned for {asked:.3f}x (predicted {predicted:.3f}x), measured {a.ratio:.3f}x CPU time, "
                f"outside [{a.band[0]:.3f}, {a.band[1]:.3f}] for a target of {target:.3f}x; correcting "
                f"({attempt + 1} of at most {config.retries})"
            )
    return attempts
