"""Unit importance, in one place: weight norms for every kind of unit, BatchNorm scales for conv channels, and the
damage a cut does to the output, measured on calibration images.

**Weight norms.** Unit ``u`` of a group scores ``L1 = sum |w|`` or ``L2 = sqrt(sum w^2)`` over its slices of the
group's weights (:func:`norms`, :func:`unit_scores`): for heads, head channels, neurons and widths the weights that
produce and consume the unit (q/k/v columns and projection rows of a head, fc1's column and fc2's row of a
neuron); for a conv channel group every source filter of the channel. ``bn_scale`` scores a channel by ``|gamma|`` of
the group's BatchNormalization nodes, falling back to L2 where the exporter folded BN into the conv
(:func:`importance` says so in a note).

**Measured damage** (``compress --importance sensitivity``). Norms rank the units *within* a layer well, but they do
not say whether the last quarter of a transformer's width costs more accuracy than half of a decoder conv: LAMP
scores are comparable across layers only in the sense that each layer's largest unit scores 1. A latency knapsack
(HALP) needs a saliency in one currency for every layer, and HALP itself uses a loss estimate (first-order Taylor).
An ONNX file has no gradients, so :func:`measure_damage` measures the loss side directly, forward only (as NetAdapt and
sensitivity analysis do):

1. run the uncut model on a few calibration images and keep its outputs;
2. for each layer and each of a few kept fractions (:data:`FRACTIONS`, and the layer's floor), cut that layer
   alone (its lowest-norm units, the ones the budget removes first), run the images again, and record the output's
   distortion: the mean per-pixel KL divergence of the class distribution from the uncut model's
   (:func:`distortion`);
3. interpolate each layer's distortion linearly in the number of units removed and make it non-decreasing
   (:func:`damage_curve`); the budget then values the next cut of a layer by the distortion it adds.

Layers are measured one at a time, so interactions between layers are ignored (the usual additive assumption of
sensitivity analysis); the cost is ``layers x points + 1`` runs over the images, up to 4 points per layer
(:data:`POINTS`; :func:`damage_points` measures fewer on a model whose run takes seconds). A layer with a
zeroing oracle (heads, head channels, neurons, conv channels) is cut by a mask: one copy of the model whose
consuming weights are multiplied by masks fed as inputs (:func:`passes._core.oracle.masked_model`) runs every such
cut in one session, with zeros in one layer's mask, and computes exactly the cut model's output. Widths (their
LayerNorms normalise over the kept channels) are rewritten for real, one session per cut. The masked session, built
once and run for every cut, is optimised as the model is deployed (onnxruntime's full graph rewrites: 22% less CPU
per run on Swin-T + UPerNet at 512); a session per cut does only the basic rewrites (half the build time on small
models; outputs equal to the fully optimised session's within 1e-6 of their scale).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx

from fileformat.errors import PassError
from passes._core.budget import Layer
from passes._core.defaults import CHANNEL_METHODS, NORMS
from passes._core.dims import unit_positions
from passes._core.oracle import all_ones, mask_input, maskable, masked_model
from passes._core.unit import PruneUnit

log = logging.getLogger(__name__)


def norms(blocks: Iterable[np.ndarray], count: int, norm: str = "l2") -> np.ndarray:
    """Per-unit ``L1`` or ``L2`` norm over ``blocks``, each an array whose first axis is the ``count`` units (the
    unit's slice of one weight); the norm is taken over all of a unit's slices together."""
    if norm not in NORMS:
        raise PassError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    total = np.zeros(count, dtype=np.float64)
    for b in blocks:
        b = np.asarray(b, dtype=np.float64).reshape(count, -1)
        total += np.abs(b).sum(axis=1) if norm == "l1" else np.square(b).sum(axis=1)
    return total if norm == "l1" else np.sqrt(total)


def weight_blocks(unit: PruneUnit, method: str = "l2") -> Iterable[np.ndarray]:
    """``[count, ...]`` blocks, one per weight, of what scores ``unit``: for heads, head channels, neurons and widths
    the weights that make and consume the units (q/k/v columns and projection rows of a head, fc1's column and
    fc2's row of a neuron); for a conv channel group its source filters, or (``bn_scale``) the ``gamma`` of its
    BatchNormalization nodes."""
    g = unit.group
    if g is None or unit.view is None:
        raise PassError(f"{unit.id} was skipped ({unit.skip_reason}); it has no importance")
    view = unit.view
    if method == "bn_scale":
        nodes = [view.nodes[i].node for i in sorted(g.nodes)]
        names = [n.input[1] for n in nodes if n.op_type == "BatchNormalization"]
    elif unit.kind == "channels":
        names = list(g.sources)
    else:
        names = g.sources + g.sinks
    for name in names:
        ts = g.slices[name]
        each = np.stack([unit_positions(ts.layout, [u]) for u in range(g.count)])  # [count, entries of one]
        yield np.take(view.constant(name), each, axis=ts.axis).swapaxes(0, ts.axis)  # type: ignore[arg-type]


def unit_scores(unit: PruneUnit, method: str = "l2") -> np.ndarray:
    """Per-unit importance of one group (:func:`weight_blocks`): its ``l1``/``l2`` norm, or for conv channels
    ``bn_scale`` (``|gamma|``; ValueError where the group has no BatchNormalization)."""
    if method == "bn_scale":
        if unit.kind != "channels":
            raise ValueError(f"bn_scale scores conv channels, not {unit.kind}")
        blocks = list(weight_blocks(unit, method))
        if not blocks:
            raise ValueError(f"group {unit.id} has no BatchNormalization (folded into the conv?)")
        return norms(blocks, unit.count, "l1")
    if method not in NORMS:
        raise ValueError(f"unknown importance {method!r}; use {', '.join(CHANNEL_METHODS)}")
    return norms(weight_blocks(unit, method), unit.count, method)


def importance(units: Sequence[PruneUnit], method: str = "l2", notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{unit id: scores}`` of every prunable unit; ``bn_scale`` falls back to ``l2`` where a group has no BN node
    (the exporter folded it into the conv), with a note in ``notes``."""
    out: dict[str, np.ndarray] = {}
    fallback = []
    for u in units:
        if not u.prunable:
            continue
        try:
            out[u.id] = unit_scores(u, method)
        except ValueError:
            if method != "bn_scale":
                raise
            fallback.append(u.id)
            out[u.id] = unit_scores(u, "l2")
    if fallback and notes is not None:
        notes.append(
            f"importance bn_scale: {len(fallback)} group(s) have no BatchNormalization node (the exporter folded BN "
            f"into the conv), used the l2 filter norm instead: {', '.join(fallback[:6])}"
            + (" ..." if len(fallback) > 6 else "")
        )
    return out


# ---------------------------------------------------------------------------------------------- measured damage
#: kept fractions each layer is measured at (besides its floor)
FRACTIONS = (0.75, 0.5, 0.25)
#: the kept fractions of ``n`` measured points per layer (0.0: the layer's floor)
POINTS = {1: (0.5,), 2: (0.5, 0.0), 3: (0.75, 0.5, 0.0), 4: (*FRACTIONS, 0.0)}
#: ``--damage-points auto`` measures as many points per layer (at most 4) as fit in about this many seconds
DAMAGE_SECONDS = 120.0


def damage_points(seconds_per_run: float, layers: int, threads: int, budget: float = DAMAGE_SECONDS) -> int:
    """Points per layer for ``--damage-points auto``: the most of 4..1 whose ``layers x points`` runs (of
    ``seconds_per_run`` each, ``threads`` at once) take at most ``budget`` seconds; at least 1. A small model
    gets all 4; Swin-T + UPerNet at 512 (4.5 s a run, 60 layers) gets 1, the half of each layer."""
    for n in (4, 3, 2):
        if layers * n * seconds_per_run / max(1, threads) <= budget:
            return n
    return 1


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


class Distortion:
    """How far outputs moved from ``reference`` (one array per run, ``N x C x H x W`` class logits): the mean
    per-pixel KL divergence ``KL(p_ref || p_out)`` of the class distributions on axis 1, averaged over the runs; an
    output of another rank counts its mean squared change over the reference's mean square. The reference's side
    is computed once; calling it is thread-safe (numpy releases the GIL for the array work)."""

    def __init__(self, reference: Sequence[np.ndarray]) -> None:
        self.reference = [np.asarray(r, dtype=np.float64) for r in reference]
        self._logp = [_log_softmax(r, 1) if r.ndim == 4 and r.shape[1] > 1 else None for r in self.reference]
        self._p = [np.exp(lp) if lp is not None else None for lp in self._logp]

    def __call__(self, output: Sequence[np.ndarray]) -> float:
        total = 0.0
        for ref, logp, p, out in zip(self.reference, self._logp, self._p, output, strict=True):
            out = np.asarray(out, dtype=np.float64)
            if ref.shape != out.shape:
                raise PassError(f"a cut changed the output's shape from {ref.shape} to {out.shape}")
            if logp is not None:
                total += float((p * (logp - _log_softmax(out, 1))).sum(axis=1).mean())
            else:
                total += float(((out - ref) ** 2).mean() / max(float((ref**2).mean()), 1e-12))
        return total / max(1, len(self.reference))


def distortion(reference: Sequence[np.ndarray], output: Sequence[np.ndarray]) -> float:
    """:class:`Distortion` of ``output`` from ``reference``."""
    return Distortion(reference)(output)


def removal_points(layer: Layer, floor: int, points: int = 4) -> list[int]:
    """How many units of ``layer`` are removed at each measured point: the kept fractions of :data:`POINTS`
    ``[points]`` (rounded up to its step, never under ``floor``; 0.0 is the floor itself), ascending, without repeats
    or zero."""
    size, step = layer.size, max(1, layer.step)
    kept = set()
    for r in POINTS[points]:
        k = max(floor, step * int(np.ceil(r * size / step - 1e-9)))
        if k % step and k < size:  # a floor that is not a multiple of the step: the next multiple above it
            k = step * int(np.ceil(k / step))
        kept.add(min(size, k))
    return sorted(size - k for k in kept if size - k > 0)


def damage_curve(size: int, measured: Mapping[int, float]) -> np.ndarray:
    """``curve[j]``: the distortion with the ``j`` lowest units removed, for ``j = 0 .. size``: 0 at ``j = 0``,
    linear between measured points, the last slope beyond the last one, and non-decreasing (a measured drop is
    noise: removing more never helps in expectation)."""
    xs = [0, *sorted(measured)]
    ys = [0.0, *(max(0.0, float(measured[j])) for j in sorted(measured))]
    j = np.arange(size + 1, dtype=np.float64)
    curve = np.interp(j, xs, ys)
    if len(xs) >= 2 and xs[-1] < size:
        slope = (ys[-1] - ys[-2]) / max(1, xs[-1] - xs[-2])
        tail = j > xs[-1]
        curve[tail] = ys[-1] + max(0.0, slope) * (j[tail] - xs[-1])
    return np.maximum.accumulate(curve)


def _batched(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The feeds as one batch where every input's first axis is symbolic (one run instead of one per image); else
    as given."""
    inputs = [i for i in model.graph.input if i.name in feeds[0]]
    symbolic = all(
        i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in inputs
    )
    if len(feeds) < 2 or not symbolic:
        return [dict(f) for f in feeds]
    return [{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}]


def measure_damage(
    model: onnx.ModelProto,
    layers: Sequence[Layer],
    floors: Mapping[str, int],
    cut: Callable[[Layer, list[int]], onnx.ModelProto],
    feeds: Sequence[Mapping[str, np.ndarray]],
    threads: int = 2,
    units: Mapping[str, PruneUnit] | None = None,
    points: int | None = 4,
) -> tuple[dict[str, np.ndarray], dict[str, dict[int, float]]]:
    """Damage curves of every layer (see the module docstring), and the measured points ``{layer: {removed:
    distortion}}``.

    A layer whose unit group is in ``units`` and has a zeroing oracle (heads, head channels, neurons, conv
    channels) is measured on one masked copy of ``model`` (:func:`passes._core.oracle.masked_model`): a cut is a
    run with zeros in the layer's mask, which computes exactly the cut model's output, with no model rewritten and
    no session built per cut. The others (widths, whose LayerNorms normalise over the kept channels) are cut for
    real: ``cut(layer, kept)`` returns a copy of ``model`` with only ``layer`` cut to the unit indices ``kept``. A
    cut the passes refuse (:class:`PassError`) makes that amount of removal, and any more, unaffordable (infinite
    damage). ``threads`` cuts are measured at once, each on one onnxruntime thread; the result does not depend on
    it. Where the model's batch axis is symbolic the images go in one batch. ``points``: the points measured per
    layer (:data:`POINTS`); None: as many as :func:`damage_points` gives for the time the uncut model's run takes.
    """
    from passes._core.latency import progress, run_cpu_ms

    if not feeds:
        raise PassError("measured sensitivity needs at least one calibration image")
    start = time.perf_counter()
    masked = {ly.name: units[ly.name] for ly in layers if units and ly.name in units}
    masked = {name: u for name, u in masked.items() if maskable(u, model) is None}
    runner = _MaskedRunner(model, masked, feeds) if masked else None
    if points is None:
        seconds = runner.seconds if runner else len(feeds) * run_cpu_ms(model, 1, runs=1, warmup=0) / 1e3
        points = damage_points(seconds, len(layers), threads, DAMAGE_SECONDS)
    jobs = [(ly, removal_points(ly, floors[ly.name], points)) for ly in layers]
    measured: dict[str, dict[int, float]] = {ly.name: {} for ly in layers}
    refused: dict[str, int] = {}
    with (
        ThreadPoolExecutor(max(1, threads)) as pool,
        progress(sum(len(r) for _, r in jobs), "sensitivity", "cut") as bar,
    ):
        if runner is not None:
            _measure_masked(runner, [j for j in jobs if j[0].name in masked], pool, bar, measured)
        rest = [j for j in jobs if j[0].name not in masked]
        if rest:
            _measure_cuts(model, rest, cut, feeds, pool, bar, measured, refused)
    curves: dict[str, np.ndarray] = {}
    for ly in layers:
        finite = {j: d for j, d in measured[ly.name].items() if np.isfinite(d)}
        curve = damage_curve(ly.size, finite)
        if ly.name in refused:
            curve[refused[ly.name] :] = np.inf
        curves[ly.name] = curve
    log.info(
        "sensitivity: %d layers (%d masked, %d point(s) each) measured on %d image(s) in %.1f s",
        len(layers),
        len(masked),
        points,
        len(feeds),
        time.perf_counter() - start,
    )
    return curves, measured


class _MaskedRunner:
    """One masked session of ``model`` (one onnxruntime thread) and its uncut outputs on ``feeds``; ``seconds``:
    the CPU time that reference run took (every cut costs as much)."""

    def __init__(
        self, model: onnx.ModelProto, units: Mapping[str, PruneUnit], feeds: Sequence[Mapping[str, np.ndarray]]
    ) -> None:
        from passes._core.latency import _session

        self.sess = _session(masked_model(model, units), 1, profile=False)
        self.batches = _batched(model, feeds)
        self.ones = all_ones(units)
        start = time.thread_time()
        self.damage = Distortion(self.run(self.ones))
        self.seconds = time.thread_time() - start

    def run(self, masks: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [self.sess.run(None, {**b, **masks})[0] for b in self.batches]


def _measure_masked(
    runner: _MaskedRunner,
    jobs: Sequence[tuple[Layer, list[int]]],
    pool: ThreadPoolExecutor,
    bar: Any,
    measured: dict[str, dict[int, float]],
) -> None:
    """Every cut of ``jobs`` as a run of the masked session (``pool``'s threads run cuts at once on it)."""
    pending: list[tuple[str, int, Future[float]]] = []
    for ly, removals in jobs:
        order = np.argsort(np.asarray(ly.scores, dtype=np.float64), kind="stable")  # lowest first: removed first
        for removed in removals:
            mask = np.ones(ly.size, np.float32)
            mask[order[:removed]] = 0.0
            masks = {**runner.ones, mask_input(ly.name): mask}
            pending.append((ly.name, removed, pool.submit(lambda m=masks: runner.damage(runner.run(m)))))
    for name, removed, job in pending:
        measured[name][removed] = job.result()
        bar.update(1)


def _measure_cuts(
    model: onnx.ModelProto,
    jobs: Sequence[tuple[Layer, list[int]]],
    cut: Callable[[Layer, list[int]], onnx.ModelProto],
    feeds: Sequence[Mapping[str, np.ndarray]],
    pool: ThreadPoolExecutor,
    bar: Any,
    measured: dict[str, dict[int, float]],
    refused: dict[str, int],
) -> None:
    """Every cut of ``jobs`` rewritten for real, each run in a session of its own (one onnxruntime thread)."""
    from passes._core.latency import _session

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        sess = _session(m, 1, profile=False, basic=True)  # built once per cut and run on a few images
        return [sess.run(None, dict(f))[0] for f in feeds]

    pending: deque[tuple[str, int, Future[float]]] = deque()

    def refuse(name: str, removed: int, exc: PassError) -> None:
        log.warning("sensitivity: %s cannot lose %d units (%s); it keeps them", name, removed, exc)
        refused[name] = min(removed, refused.get(name, removed))
        measured[name] = {j: d for j, d in measured[name].items() if j < refused[name]}
        measured[name][refused[name]] = float("inf")

    def collect() -> None:
        name, removed, job = pending.popleft()
        bar.update(1)
        if removed < refused.get(name, removed + 1):
            try:
                measured[name][removed] = job.result()
            except PassError as exc:
                refuse(name, removed, exc)

    # The cuts are built here, one after the other (graph edits hold the GIL); each is run in a worker thread,
    # one onnxruntime thread per session (building and running a session releases the GIL), so several cuts are
    # measured at once while the next ones are built.
    workers = pool._max_workers  # type: ignore[attr-defined]
    damage = Distortion(pool.submit(run, model).result())  # on one thread, as every cut: equal models read equal
    for ly, removals in jobs:
        order = np.argsort(np.asarray(ly.scores, dtype=np.float64), kind="stable")
        for i, removed in enumerate(removals):
            try:
                cut_model = cut(ly, sorted(int(u) for u in order[removed:]))
            except PassError as exc:
                refuse(ly.name, removed, exc)
                bar.update(len(removals) - i)
                break
            pending.append((ly.name, removed, pool.submit(lambda m=cut_model: damage(run(m)))))
            while len(pending) > 2 * workers:  # a bounded number of cut models in memory
                collect()
    while pending:
        collect()
