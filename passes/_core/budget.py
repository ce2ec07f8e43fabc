"""Global budgets: how many units (channels, widths, heads, head channels, neurons) each layer keeps so the model
hits a FLOPs, parameter or latency target.

**Cost model.** The passes cut whole units, so every contraction node's FLOPs and every weight's size is a constant
times a product of *kept fractions*::

    cost(k) = sum_t  base_t * prod_{f in t}  ( sum_{(l, n) in f} k_l(n) ) / ( sum_{(l, n) in f} n )

where a factor ``f`` lists the segments ``(layer, size)`` of one axis (a Conv's output channels, its input channels,
which may be a Concat of several layers), ``k_l(n) = kept units of layer l`` for a layer being budgeted and ``n``
otherwise. A Conv ``[C_out, C_in, k, k]`` has two factors (its output and input groups), a depthwise Conv one, a
bias one. ``base_t`` comes from :func:`passes._core.stats.graph_stats` of the input model, which also measures the
result independently; for latency, from the measured table of :mod:`passes._core.latency` (a constant and a scaled
term per node).

A layer with ``step > 1`` loses its units that many at a time, lowest first, so its kept count stays a multiple of
``step`` (channel counts at multiples of 8 keep onnxruntime's NCHWc convolutions and TensorRT's tensor cores).

**LAMP** (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021). Within one layer, sort
the units by magnitude ascending, ``u_1 <= u_2 <= ... <= u_n`` (a unit's magnitude is its importance score, e.g. the
L2 norm of a channel's filters); the LAMP score of unit ``i`` is::

    lamp(u_i) = u_i^2 / sum_{j >= i} u_j^2

so the largest unit of every layer scores 1 and scores are comparable across layers. Units are removed globally in
ascending LAMP order, skipping a layer at its floor, until the cost reaches the target. Units differ in cost (an
attention head at 512x512 is worth far more FLOPs than a channel): a unit whose removal would jump more than 1%
below the target is passed over and the walk goes on with cheaper units; only if none of them lands within 1% is
the first such unit removed after all.

**HALP** (Shen et al., "Structural pruning via latency-saliency knapsack", NeurIPS 2022): a greedy knapsack. The
next cut of every layer is valued by its LAMP score (or, with ``--importance sensitivity``, by the output distortion
it adds, measured on calibration images by :mod:`passes._core.importance`) per unit of cost it saves at the current
state (costs interact: a narrower width makes its heads cheaper, so savings are recomputed for the layer just cut and
for all layers every few cuts); the cheapest importance per millisecond goes first, until the target is met.

**Uniform**: every layer keeps the same fraction ``r`` (at least its floor), the largest ``r`` that meets the target
(bisection), then layers (largest first) take back the unit the next step of ``r`` would give them while the target
still holds; within a layer the highest-importance units are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: one axis of a weight or node: its segments ``(layer name or None (never cut), units)``
Factor = tuple[tuple[str | None, int], ...]

METHODS = ("lamp", "uniform", "halp")
METRICS = ("flops", "params", "latency")


@dataclass(frozen=True)
class Term:
    """``base`` (FLOPs of one node, or elements of one weight) scaled by the kept fraction of each factor."""

    base: float
    factors: tuple[Factor, ...] = ()


@dataclass
class Layer:
    """A budgeted layer: ``scores[i]`` is the importance of unit ``i``; at least ``floor`` units (and the budget's
    fractional floor) are always kept."""

    name: str
    scores: np.ndarray
    floor: int = 1
    kind: str = "channels"
    scope: str = ""
    step: int = 1  # units are removed this many at a time (channel counts kept at multiples of 8)
    #: measured saliency (:mod:`passes._core.importance`): ``damage[j]`` is the output distortion with the ``j``
    #: lowest-scored units removed; HALP then values a cut by the damage it adds instead of by LAMP scores
    damage: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(len(self.scores))


def lamp_scores(scores: np.ndarray) -> np.ndarray:
    """LAMP score of each unit of one layer: ``u_i^2 / sum_{j >= i} u_j^2`` over the units sorted ascending.

    Ties are ordered by index (stable sort). A layer whose units are all zero scores 0 everywhere.
    """
    u = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(u, kind="stable")
    sq = u[order] ** 2
    tail = np.cumsum(sq[::-1])[::-1]  # tail[i] = sum_{j >= i} sq[j]
    out = np.zeros_like(u)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[order] = np.where(tail > 0, sq / np.where(tail > 0, tail, 1.0), 0.0)
    return out


class CostModel:
    """Evaluates ``cost(k)`` (see the module docstring), in full or incrementally as units are removed."""

    def __init__(self, terms: Sequence[Term], layers: Mapping[str, int]) -> None:
        self.sizes = dict(layers)
        self.base = np.array([t.base for t in terms], dtype=np.float64)
        self._factors: list[Factor] = []
        index: dict[Factor, int] = {}
        self._term_factors: list[list[int]] = []
        for t in terms:
            ids = []
            for f in t.factors:
                f = tuple((name if name in self.sizes else None, int(n)) for name, n in f)
                if all(name is None for name, _ in f):
                    continue  # a factor no budgeted layer touches is constant 1
                if f not in index:
                    index[f] = len(self._factors)
                    self._factors.append(f)
                ids.append(index[f])
            self._term_factors.append(ids)
        self._factor_terms: list[list[int]] = [[] for _ in self._factors]
        for ti, ids in enumerate(self._term_factors):
            for fi in set(ids):
                self._factor_terms[fi].append(ti)
        self._layer_factors: dict[str, list[tuple[int, int]]] = {name: [] for name in self.sizes}
        for fi, f in enumerate(self._factors):
            mult: dict[str, int] = {}
            for name, _ in f:
                if name is not None:
                    mult[name] = mult.get(name, 0) + 1
            for name, m in mult.items():
                self._layer_factors[name].append((fi, m))
        self._total = np.array([sum(n for _, n in f) for f in self._factors], dtype=np.float64)
        self.full = float(self.base.sum())
        self.reset()

    def reset(self, counts: Mapping[str, int] | None = None) -> float:
        """Start the incremental evaluation at ``counts`` (default: every unit kept); return the cost."""
        counts = dict(self.sizes) if counts is None else {**self.sizes, **counts}
        self._kept = np.array(
            [sum(counts[name] if name is not None else n for name, n in f) for f in self._factors], dtype=np.float64
        )
        self._values = np.array([self._term_value(ti) for ti in range(len(self.base))])
        self.current = float(self._values.sum())
        return self.current

    def _term_value(self, ti: int) -> float:
        v = self.base[ti]
        for fi in self._term_factors[ti]:
            v *= self._kept[fi] / self._total[fi]
        return float(v)

    def remove(self, layer: str, units: int = 1) -> float:
        """Remove ``units`` units of ``layer`` from the current state; return the new cost."""
        touched: set[int] = set()
        for fi, m in self._layer_factors.get(layer, []):
            self._kept[fi] -= m * units
            touched.update(self._factor_terms[fi])
        for ti in touched:
            new = self._term_value(ti)
            self.current += new - self._values[ti]
            self._values[ti] = new
        return self.current

    def peek(self, layer: str, units: int = 1) -> float:
        """The cost after removing ``units`` units of ``layer``, without changing the state."""
        delta: dict[int, float] = {}
        kept = dict.fromkeys((fi for fi, _ in self._layer_factors.get(layer, [])), 0.0)
        for fi, m in self._layer_factors.get(layer, []):
            kept[fi] = self._kept[fi] - m * units
        for fi in kept:
            for ti in self._factor_terms[fi]:
                if ti in delta:
                    continue
                v = self.base[ti]
                for fj in self._term_factors[ti]:
                    v *= (kept[fj] if fj in kept else self._kept[fj]) / self._total[fj]
                delta[ti] = float(v) - self._values[ti]
        return self.current + sum(delta.values())

    def evaluate(self, counts: Mapping[str, int]) -> float:
        """Cost with ``counts`` kept units per layer (layers not named keep all), without changing the state."""
        kept = np.array(
            [sum(n if name is None else counts.get(name, self.sizes[name]) for name, n in f) for f in self._factors],
            dtype=np.float64,
        )
        total = 0.0
        for ti, ids in enumerate(self._term_factors):
            v = self.base[ti]
            for fi in ids:
                v *= kept[fi] / self._total[fi]
            total += v
        return float(total)


@dataclass
class BudgetConfig:
    """Keep ``target`` (in (0, 1]) of the model's ``metric`` with ``method``; every layer keeps at least
    ``max(min_units, ceil(floor * units))`` units."""

    target: float
    metric: str = "flops"
    method: str = "lamp"
    floor: float = 0.1
    min_units: int = 1

    def validate(self) -> None:
        if not (isinstance(self.target, (int, float)) and 0.0 < float(self.target) <= 1.0):
            raise ValueError(f"the target must be a fraction in (0, 1] of the model's {self.metric}, not {self.target}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown budget metric {self.metric!r}; use one of {METRICS}")
        if self.method not in METHODS:
            raise ValueError(f"unknown allocation {self.method!r}; use one of {METHODS}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"the per-layer floor must be a fraction in [0, 1), not {self.floor}")

    def floor_of(self, size: int) -> int:
        return min(size, max(self.min_units, int(math.ceil(self.floor * size - 1e-9))))


@dataclass
class Allocation:
    """The outcome: kept unit indices per layer and the estimated cost fractions after the cut."""

    keep: dict[str, list[int]]
    counts: dict[str, int]
    flops: float
    params: float
    target: float
    metric: str
    method: str
    reached: bool
    at_floor: list[str] = field(default_factory=list)
    latency: float | None = None  # the latency model's estimate (fraction), when there is one

    @property
    def achieved(self) -> float:
        return {"flops": self.flops, "params": self.params}.get(self.metric, self.latency or 0.0)


def select_top(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, sorted (ties: the lower index wins): what a unit group keeps."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[: max(0, int(count))])


def allocate(
    layers: Sequence[Layer],
    flops: CostModel,
    params: CostModel,
    config: BudgetConfig,
    latency: CostModel | None = None,
) -> Allocation:
    """Choose kept units per layer so the ``config.metric`` cost is at most ``target`` of its full value.

    LAMP removes units globally in ascending LAMP score; uniform bisects one kept fraction for all layers. Either
    stops at the first state that meets the target; if the floors make it unreachable, ``reached`` is False and
    ``at_floor`` names the layers that stopped at their floor.
    """
    config.validate()
    if config.metric == "latency" and latency is None:
        raise ValueError("a latency budget needs a latency cost model")
    model = {"flops": flops, "params": params}.get(config.metric, latency)
    assert model is not None
    goal = float(config.target) * model.full
    floors = {ly.name: min(ly.size, max(ly.floor, config.floor_of(ly.size))) for ly in layers}
    sizes = {ly.name: ly.size for ly in layers}
    if config.method in ("lamp", "halp"):
        walk = _lamp if config.method == "lamp" else _halp
        counts, removed, reached = walk(layers, model, goal, floors)
        keep = {ly.name: [i for i in range(ly.size) if i not in removed[ly.name]] for ly in layers}
    else:
        counts, reached = _uniform(layers, model, goal, floors)
        keep = {ly.name: select_top(ly.scores, counts[ly.name]) for ly in layers}
    at_floor = [name for name in sizes if counts[name] <= floors[name] < sizes[name]] if not reached else []
    f = flops.evaluate(counts) / flops.full if flops.full else 1.0
    p = params.evaluate(counts) / params.full if params.full else 1.0
    lat = latency.evaluate(counts) / latency.full if latency is not None and latency.full else None
    return Allocation(keep, counts, f, p, float(config.target), config.metric, config.method, reached, at_floor, lat)


def _halp(
    layers: Sequence[Layer], model: CostModel, goal: float, floors: Mapping[str, int], refresh: int = 16
) -> tuple[dict[str, int], dict[str, set[int]], bool]:
    """Greedy knapsack (HALP): remove the unit with the least importance per unit of cost saved.

    Importance is the unit's LAMP score (comparable across layers), or the measured damage of the cut where the
    layer has a damage curve (:mod:`passes._core.importance`); the saving of a layer's next unit is
    ``cost - cost after removing it``, recomputed for that layer after each removal and for all layers every
    ``refresh`` removals (the terms couple layers: cutting a width makes its heads cheaper)."""
    counts = {ly.name: ly.size for ly in layers}
    removed: dict[str, set[int]] = {ly.name: set() for ly in layers}
    cost = model.reset()
    if cost <= goal:
        return counts, removed, True
    by_name = {ly.name: ly for ly in layers}
    lamp = {ly.name: lamp_scores(ly.scores) for ly in layers}
    # removal order: ascending LAMP score, or ascending magnitude where the damage curve was measured in that order
    order = {
        ly.name: [int(i) for i in np.argsort(ly.scores if ly.damage is not None else lamp[ly.name], kind="stable")]
        for ly in layers
    }
    pos = dict.fromkeys(counts, 0)
    saving: dict[str, float] = {}
    step = {ly.name: ly.step for ly in layers}

    def worth(name: str) -> float:
        """What the layer's next cut (``step`` units) loses: the damage it adds, else the sum of LAMP scores."""
        damage, p = by_name[name].damage, pos[name]
        if damage is not None:
            return float(damage[p + step[name]] - damage[p])
        return float(sum(lamp[name][order[name][p : p + step[name]]]))

    def update(name: str) -> None:
        if counts[name] - step[name] < floors[name] or not math.isfinite(worth(name)):
            saving.pop(name, None)
        else:
            saving[name] = model.current - model.peek(name, step[name])

    for ly in layers:
        update(ly.name)
    done = 0
    while saving:
        name = min(saving, key=lambda n: (worth(n) + 1e-12) / max(saving[n], 1e-12))
        idx = order[name][pos[name] : pos[name] + step[name]]
        pos[name] += len(idx)
        counts[name] -= len(idx)
        removed[name].update(idx)
        if model.remove(name, len(idx)) <= goal * (1 + 1e-12):
            return counts, removed, True
        done += 1
        for n in list(saving) if done % refresh == 0 else [name]:
            update(n)
    return counts, removed, False


def _lamp(
    layers: Sequence[Layer], model: CostModel, goal: float, floors: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, set[int]], bool]:
    counts = {ly.name: ly.size for ly in layers}
    removed: dict[str, set[int]] = {ly.name: set() for ly in layers}
    cost = model.reset()
    if cost <= goal:
        return counts, removed, True
    units = []
    order: dict[str, list[int]] = {}
    for li, ly in enumerate(layers):
        lamp = lamp_scores(ly.scores)
        order[ly.name] = [int(i) for i in np.argsort(lamp, kind="stable")]
        units += [(float(s), li, i) for i, s in enumerate(lamp)]
    units.sort()

    def chunk(ly: Layer) -> list[int]:  # the layer's next ``step`` units, lowest LAMP first
        rest = [i for i in order[ly.name] if i not in removed[ly.name]]
        return rest[: ly.step]

    def take(ly: Layer, idx: list[int]) -> None:
        counts[ly.name] -= len(idx)
        removed[ly.name].update(idx)
        model.remove(ly.name, len(idx))

    overshoot: tuple[Layer, list[int]] | None = None  # the first cut that would jump well below the target
    for _, li, i in units:
        ly = layers[li]
        if i in removed[ly.name] or counts[ly.name] - ly.step < floors[ly.name]:
            continue
        idx = chunk(ly)
        after = model.peek(ly.name, len(idx))
        if after <= goal * (1 + 1e-12) and after < goal * (1 - _LANDING):
            overshoot = overshoot or (ly, idx)
            continue
        take(ly, idx)
        if after <= goal * (1 + 1e-12):
            return counts, removed, True
    if overshoot is not None:  # nothing lands within _LANDING: take the first overshooting cut after all
        take(*overshoot)
        return counts, removed, True
    return counts, removed, False


#: relative distance below the target that a budget accepts without looking further for a closer landing
_LANDING = 0.01


def _uniform(
    layers: Sequence[Layer], model: CostModel, goal: float, floors: Mapping[str, int]
) -> tuple[dict[str, int], bool]:
    def counts_at(r: float) -> dict[str, int]:
        def count(ly: Layer) -> int:
            n = min(ly.size, ly.step * int(math.ceil(r * ly.size / ly.step - 1e-9)))
            return n if n >= floors[ly.name] else min(ly.size, ly.step * math.ceil(floors[ly.name] / ly.step))

        return {ly.name: count(ly) for ly in layers}

    full = counts_at(1.0)
    if model.evaluate(full) <= goal:
        return full, True
    lo_counts = counts_at(0.0)
    if model.evaluate(lo_counts) > goal * (1 + 1e-12):
        return lo_counts, False
    lo, hi = 0.0, 1.0  # cost(lo) <= goal < cost(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if model.evaluate(counts_at(mid)) <= goal * (1 + 1e-12):
            lo = mid
        else:
            hi = mid
    counts, upper = counts_at(lo), counts_at(hi)
    # the step from lo to hi adds a unit to several layers at once; give back those that still fit the target
    for ly in sorted(layers, key=lambda ly: -ly.size):
        if upper[ly.name] > counts[ly.name]:
            trial = {**counts, ly.name: upper[ly.name]}
            if model.evaluate(trial) <= goal * (1 + 1e-12):
                counts = trial
    return counts, True
