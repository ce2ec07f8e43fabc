"""A latency model measured on the target, for budgets in time instead of FLOPs (HALP-style allocation).

Per node ``n`` of the graph onnxruntime actually runs (after its own fusions), time is modelled as::

    t_n(k) = a_n + b_n * prod_{f in F_n} (kept units of f / units of f)

where ``F_n`` are the unit and channel groups carried by the tensors the node reads or writes (a fused node keeps the
tensor names of the graph it came from). ``a_n`` and ``b_n`` are fitted from onnxruntime's profiler on the full model
and on variants with every group cut to the same fraction (all groups at once: a few sessions, not one per unit),
least squares on ``t = a + b * p`` with ``b`` clipped to ``[0, t_n(1)]``. Profiles are taken with onnxruntime's
default (full) optimisation, as the model is deployed: a fused node stands for the nodes whose outputs it writes and
for the node it is named after (``<node>/QuickGeluFusion/``), an NCHWc conv (named ``<output>_nchwc``) for the conv
whose output it replaces. What no node accounts for (the session's own work between nodes) is one constant term: per
profiled run, the run's time minus the sum of its node times, so a load on the machine inflates both alike.

**Measuring on a busy machine.** Everything is measured at one onnxruntime thread by default
(:data:`LATENCY_THREADS`), and ratios of models are of CPU time, timed interleaved (:func:`measure_pair`): one
thread's CPU time is what moves least with the machine's load (no worker thread spins while it waits, and its own
clock counts only its own work; worker threads of a session with more threads never spin either). A node's time
in a profile is its least time over the runs, rescaled to the runs' CPU time (:func:`_node_times`). Profiles and
pairs take as many runs as the model's speed calls for (a model of seconds: three; :func:`planned_runs`), and a
pair stops once the ratio's standard error is under 1% of it. Every phase draws a progress bar with the time left.

A table is cached by the model's fingerprint, the machine and the thread count. ``trtexec --exportProfile`` JSON
(per-layer times on the device; TensorRT names a fused layer ``"a + b"`` after its ONNX nodes) is imported with
``b_n = t_n`` for layers that carry a group: a Jetson user calibrates the budget with the device's own times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fileformat.errors import PassError
from fileformat.io import atomic_write_text
from passes._core.budget import Factor, Term
from passes._core.defaults import LATENCY_THREADS

log = logging.getLogger(__name__)

#: a model whose profiled run takes this many ms or more is not timed again without the profiler (:func:`fit_table`)
PLAIN_RUNS_UNDER_MS = 1000.0
TABLE_VERSION = 3  # 2: one thread, calibrated against plain runs' CPU time; 3: node times as least times


@dataclass
class NodeTime:
    """One profiled node: its name, the tensors it reads and writes, and the fitted ``a + b * prod(...)``."""

    name: str
    tensors: list[str]
    a: float
    b: float = 0.0


@dataclass
class LatencyTable:
    """Per-node latency terms (milliseconds) of one model on one machine."""

    fingerprint: str
    machine: str
    threads: int
    source: str  # "onnxruntime" or "trtexec"
    wall_ms: float  # the full model's measured time per run (CPU time of a session that does not profile)
    overhead_ms: float
    nodes: list[NodeTime] = field(default_factory=list)
    version: int = TABLE_VERSION
    #: the profiler's own CPU time per run (profiled runs' CPU time less a plain run's), taken off the nodes'
    #: constants evenly
    profiler_ms: float = 0.0

    def terms(self, factors_of: Callable[[Sequence[str]], list[Factor]]) -> list[Term]:
        """Cost-model terms (see :mod:`passes._core.budget`): a constant and a scaled term per node."""
        out = [Term(self.overhead_ms)]
        for n in self.nodes:
            out.append(Term(n.a))
            if n.b:
                out.append(Term(n.b, tuple(factors_of(n.tensors))))
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        if data.get("version") != TABLE_VERSION:
            raise PassError(f"latency table version {data.get('version')!r} is not {TABLE_VERSION}; measure it again.")
        nodes = [NodeTime(**n) for n in data.get("nodes", [])]
        return cls(**{**data, "nodes": nodes})


def fingerprint(model: onnx.ModelProto) -> str:
    """The model's structure and weights (not its metadata): a table fits exactly one graph."""
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(n.SerializeToString())
    for t in model.graph.initializer:
        h.update(t.name.encode())
        h.update(bytes(str(list(t.dims)), "ascii"))
    return h.hexdigest()[:20]


def machine_id() -> str:
    return f"{platform.machine()}-{platform.processor() or 'cpu'}-{os.cpu_count()}cores"


def cache_path(model: onnx.ModelProto, threads: int) -> Path:
    root = Path(os.environ.get("VITSEG_CACHE", Path.home() / ".cache" / "vitseg")) / "latency"
    return root / f"{fingerprint(model)}-{machine_id()}-t{threads}-v{TABLE_VERSION}.json"


# ---------------------------------------------------------------------------------------------------- profiling


def _session(
    model: onnx.ModelProto, threads: int, profile: bool, optimized: str | None = None, basic: bool = False
) -> Any:
    """A CPU session (:func:`fileformat.session.load_session`) with onnxruntime's default (full) optimisation, as
    the model is deployed; ``basic``: only the basic graph rewrites (constant folding, redundant nodes), which
    builds in half the time, for sessions that are run a few times for their outputs rather than timed. Worker
    threads do not spin while they wait: a spinning thread's CPU time grows with the machine's load, not with the
    model's work."""
    from fileformat.session import SessionConfig, load_session

    prefix = str(Path(tempfile.gettempdir()) / f"vitseg_profile_{os.getpid()}") if profile else None
    config = SessionConfig(
        threads=threads,
        inter_threads=1,
        optimization="basic" if basic else None,
        profile_prefix=prefix,
        optimized_model_path=optimized,
    )
    return load_session(model, config)


def _feed(sess: Any, model: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for ``sess``; a symbolic dimension at the size ``model`` is traced at
    (:func:`passes._core.graph.bindings`: a batch of 1, the recorded height and width), else 1."""
    from passes._core.graph import bindings

    sizes = bindings(model) if model is not None else {}
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else int(sizes.get(str(d), 1)) for d in i.shape]
        out[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return out


def progress(total: float, desc: str, unit: str = "run") -> Any:
    """A progress bar on stderr with the time left, drawn even when stderr is not a terminal (a caller that
    captures the output, such as ``runtime.pipeline``, still shows how far a long phase is)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5, dynamic_ncols=True, file=sys.stderr)


def cpu_clock(threads: int) -> Callable[[], float]:
    """The CPU-time clock for a session of ``threads`` onnxruntime threads: at one thread the calling thread runs
    every kernel, so its own CPU time (which no other thread of the process adds to); else the process's."""
    return time.thread_time if threads == 1 else time.process_time


def planned_runs(seconds_per_run: float, min_seconds: float = 1.0, least: int = 3, most: int = 10) -> int:
    """Timed runs for a measurement of at least ``min_seconds``: ``least`` for a model of seconds, up to ``most``
    for a model of milliseconds (the node times of a large model are steady; a small one needs more samples)."""
    return int(min(most, max(least, math.ceil(min_seconds / max(seconds_per_run, 1e-6)))))


@dataclass
class Profile:
    """One model's profile: median ms per node name, the tensors of each node, median run ms, median overhead ms
    (the run's time not in any node), and the runs and warm-up runs taken."""

    times: dict[str, float]
    tensors: dict[str, list[str]]
    wall_ms: float
    overhead_ms: float
    runs: int
    warmup: int
    cpu_ms: float = 0.0  # median CPU time of a profiled run (profiler included)


def profile(
    model: onnx.ModelProto,
    threads: int = LATENCY_THREADS,
    runs: int | None = None,
    warmup: int | None = None,
    bar: Any = None,
) -> Profile:
    """The :class:`Profile` of ``model`` in onnxruntime (CPU). The profiler's times are wall times, which a busy
    machine inflates by the time the thread waited for a core; :func:`_node_times` says how the node times and the
    overhead (the run's time not in any node) are taken from them and from the runs' CPU time.
    ``runs``/``warmup`` of None: as many as :func:`planned_runs` gives for the model's speed (one warm-up run for a
    model of a second or more). ``bar``: a :func:`progress` bar advanced once per run (its total raised to the runs
    planned when it had none)."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimized.onnx")
        sess = _session(model, threads, True, opt)
        feed = _feed(sess, model)
        t0 = time.perf_counter()
        sess.run(None, feed)
        first = time.perf_counter() - t0
        warmup = (1 if first > 1.0 else 3) if warmup is None else max(1, warmup)
        runs = planned_runs(first) if runs is None else runs
        if bar is not None:
            if not bar.total:
                bar.total = runs + warmup
            bar.update(1)
        cpu = _timed_runs(sess, feed, warmup - 1 + runs, threads, bar)[warmup - 1 :]
        trace = sess.end_profiling()
        try:
            events = json.loads(Path(trace).read_text())
        finally:
            Path(trace).unlink(missing_ok=True)
        times, wall, overhead = _node_times(events, warmup, cpu, threads)
        tensors = _node_tensors(model, opt)
    return Profile(times, tensors, wall, max(0.0, overhead), runs, warmup, statistics.median(cpu) if cpu else wall)


def _timed_runs(sess: Any, feed: dict[str, np.ndarray], n: int, threads: int, bar: Any) -> list[float]:
    """The CPU ms of ``n`` runs (:func:`cpu_clock`), advancing ``bar`` once per run."""
    clock = cpu_clock(threads)
    cpu: list[float] = []
    for _ in range(n):
        c0 = clock()
        sess.run(None, feed)
        cpu.append((clock() - c0) * 1e3)
        if bar is not None:
            bar.update(1)
    return cpu


def _node_times(
    events: list[dict[str, Any]], warmup: int, cpu: Sequence[float], threads: int
) -> tuple[dict[str, float], float, float]:
    """``(ms per node, median run ms, median overhead ms)`` of the profiled runs after ``warmup``.

    The profiler times a node by the wall clock, which a busy machine inflates by the time the thread waited for a
    core. At one thread, the run's overhead is its CPU time less the sum of its node times, each run's node times
    scaled by the run's CPU time over its wall time (a single-threaded run cannot compute faster than its wall
    clock, so the scale never exceeds 1). A node's time is its least time over the runs (the run a neighbour
    disturbed least: most nodes are far shorter than the scheduler's time slice, and one of the runs finds them
    not preempted), rescaled so that the nodes sum to the median run's CPU time less the overhead. Scaling every
    node by its run's CPU over wall time instead charges the waits, which fall in the long nodes, to the short ones
    too: on `paper` at 256 beside two busy processes (``bench/bench_latency_target.py``) the first plans of a table
    so made ran 6-18% slower than it predicted, those of least times rescaled within 10% (-9.7% to +5.7%). At more
    threads (the process's CPU time counts several): the median wall time per node."""
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup:]
    start = spans[0][0] if spans else 0
    scale = [min(1.0, c / max((b - a) / 1e3, 1e-9)) if threads == 1 else 1.0 for (a, b), c in zip(spans, cpu)]
    per: dict[str, list[float]] = {}
    in_run = [0.0] * len(spans)
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and e.get("ts", 0) >= start:
            k = next((i for i, (a, b) in enumerate(spans) if a <= e["ts"] <= b), None)
            per.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1e3)
            if k is not None:
                in_run[k] += e["dur"] / 1e3 * scale[k]
    if not spans:
        return {n: statistics.median(v) for n, v in per.items()}, 0.0, 0.0
    overhead = statistics.median([(b - a) / 1e3 * f - t for (a, b), f, t in zip(spans, scale, in_run)])
    wall = statistics.median([(b - a) / 1e3 for a, b in spans])
    if threads != 1 or not cpu:
        return {n: statistics.median(v) for n, v in per.items()}, wall, overhead
    least = {n: min(v) for n, v in per.items()}
    total = sum(least.values())
    factor = max(0.0, statistics.median(cpu) - max(0.0, overhead)) / total if total > 0 else 1.0
    return {n: t * factor for n, t in least.items()}, wall, overhead


def _node_tensors(model: onnx.ModelProto, optimized_path: str) -> dict[str, list[str]]:
    """The tensors of ``model`` each node of onnxruntime's optimised graph stands for: the outputs it writes (a
    fusion keeps them), the node it is named after (``<node>/QuickGeluFusion/``), and for an NCHWc conv (named
    ``<output>_nchwc``, its tensors renamed) the conv whose output it replaces."""
    original = {o: [t for t in (*n.input, *n.output) if t] for n in model.graph.node for o in n.output if o}
    by_name = {n.name: [t for t in (*n.input, *n.output) if t] for n in model.graph.node if n.name}
    tensors: dict[str, list[str]] = {}
    try:
        optimized = onnx.load(optimized_path, load_external_data=False)
    except Exception as exc:  # an optimised graph onnx cannot read: names only
        log.warning("could not read onnxruntime's optimised graph (%s); node tensors unknown", exc)
        return tensors
    for n in optimized.graph.node:
        own = [t for t in (*n.input, *n.output) if t]
        stands_for = [*n.output, n.name.removesuffix("_nchwc")]
        found = own + [t for o in stands_for for t in original.get(o, [])]
        name = n.name
        while name and name not in by_name and "/" in name:
            name = name.rsplit("/", 1)[0]
        found += by_name.get(name, [])
        tensors[n.name] = list(dict.fromkeys(found))
    return tensors


def fit_table(
    model: onnx.ModelProto,
    variants: Sequence[tuple[onnx.ModelProto, Callable[[Sequence[str]], float]]],
    threads: int = LATENCY_THREADS,
    runs: int | None = None,
) -> LatencyTable:
    """Fit ``a_n, b_n`` per node of ``model`` from its profile and those of ``variants``.

    Each variant is ``(cut model, fraction(tensors))``: the product of kept fractions that the cut applies to a
    node carrying those tensors. Every profile takes the same number of runs (``runs``, or as many as the full
    model's speed calls for); a progress bar shows the runs left. A model whose run takes a second or more is not
    run again without the profiler: the profiler's own work, some microseconds per node, is under 0.1% of it."""
    with progress(0, "latency table") as bar:
        full = profile(model, threads, runs, None, bar)
        slow = full.cpu_ms >= PLAIN_RUNS_UNDER_MS
        bar.total = (len(variants) + (1 if slow else 2)) * (full.runs + full.warmup)
        bar.refresh()
        profiles = [(profile(v, threads, full.runs, full.warmup, bar).times, frac) for v, frac in variants]
        plain = full.cpu_ms if slow else run_cpu_ms(model, threads, full.runs, full.warmup, bar)
    t_full, tensors = full.times, full.tensors
    # the profiler's own work, a few microseconds per node, is in every node's time: at 64 px, where a node takes
    # some 15 us, it made a cut look twice as slow as it runs. It is the profiled runs' CPU time less a plain run's,
    # taken off the nodes' constants evenly.
    excess = max(0.0, full.cpu_ms - plain)
    per_node = excess / max(1, len(t_full))
    nodes = []
    for name, t1 in t_full.items():
        tens = tensors.get(name, [])
        xs, ys = [1.0], [t1]
        for times, frac in profiles:
            if name in times:
                xs.append(frac(tens))
                ys.append(times[name])
        b = 0.0
        if len(xs) > 1 and max(xs) - min(xs) > 1e-6:
            b = float(np.polyfit(xs, ys, 1)[0])
        b = min(max(b, 0.0), t1)
        nodes.append(NodeTime(name, tens, max(0.0, t1 - b - per_node), b))
    removed = sum(max(0.0, t_full[n.name] - n.b) - n.a for n in nodes)  # less where a constant was smaller
    overhead = max(0.0, full.overhead_ms - (excess - removed))  # the rest comes off the run's own overhead
    table = LatencyTable(fingerprint(model), machine_id(), threads, "onnxruntime", plain, overhead, nodes)
    table.profiler_ms = excess
    return table


def run_cpu_ms(model: onnx.ModelProto, threads: int, runs: int, warmup: int, bar: Any = None) -> float:
    """The median CPU ms per run of ``model`` in a session that does not profile (:func:`cpu_clock`)."""
    sess = _session(model, threads, False)
    feed = _feed(sess, model)
    clock = cpu_clock(threads)
    for _ in range(warmup):
        sess.run(None, feed)
        if bar is not None:
            bar.update(1)
    times = []
    for _ in range(max(1, runs)):
        c0 = clock()
        sess.run(None, feed)
        times.append((clock() - c0) * 1e3)
        if bar is not None:
            bar.update(1)
    return statistics.median(times)


def from_trtexec(profile_json: Any, model: onnx.ModelProto) -> LatencyTable:
    """A table from ``trtexec --exportProfile`` output: per-layer average times on the device.

    A layer named after ONNX nodes (``"a"``, ``"a + b"``, Myelin's ``"{ForeignNode[a...b]}"`` is not resolved)
    carries their tensors and scales fully with them (``b = t``); other layers are constant."""
    entries = [e for e in profile_json if isinstance(e, dict) and "name" in e]
    if not entries:
        raise PassError("the trtexec profile holds no layers (expected the JSON of `trtexec --exportProfile=FILE`).")
    by_name = {n.name: n for n in model.graph.node if n.name}
    nodes, total = [], 0.0
    for e in entries:
        ms = float(e.get("averageMs", e.get("timeMs", 0.0) / max(1, int(e.get("count", 1)))))
        total += ms
        parts = [p.strip() for p in str(e["name"]).split(" + ")]
        tens = [t for p in parts if p in by_name for t in (*by_name[p].input, *by_name[p].output) if t]
        nodes.append(NodeTime(str(e["name"]), tens, 0.0 if tens else ms, ms if tens else 0.0))
    return LatencyTable(fingerprint(model), "trtexec", 0, "trtexec", total, 0.0, nodes)


def load_table(path: str | Path, model: onnx.ModelProto) -> LatencyTable:
    """A table from ``path``: ours (checked against the model's fingerprint) or a trtexec profile."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PassError(f"cannot read the latency table {path}: {exc}") from exc
    if isinstance(data, list):
        return from_trtexec(data, model)
    table = LatencyTable.from_dict(data)
    if table.fingerprint != fingerprint(model):
        raise PassError(
            f"the latency table {path} was measured on another model (fingerprint {table.fingerprint}, this model "
            f"{fingerprint(model)}); measure it on this model (omit --latency-table, or give a new file name)."
        )
    return table


def save_table(table: LatencyTable, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), table.to_json())


@dataclass
class PairTiming:
    """An interleaved measurement of model ``b`` against model ``a``: median wall ms of each, the median of the
    rounds' CPU-time ratios ``b / a`` and its bootstrapped standard error, and the rounds taken."""

    a_ms: float
    b_ms: float
    ratio: float
    se: float
    rounds: int

    def __iter__(self) -> Any:  # (a_ms, b_ms, ratio, se), as callers unpack it
        return iter((self.a_ms, self.b_ms, self.ratio, self.se))


def _bootstrap_se(ratios: Sequence[float]) -> float:
    resampled = np.random.default_rng(0).choice(np.asarray(ratios), (200, len(ratios)))
    return float(np.median(resampled, axis=1).std())


def measure_pair(
    a: onnx.ModelProto,
    b: onnx.ModelProto,
    threads: int = LATENCY_THREADS,
    rounds: int = 40,
    min_seconds: float = 0.0,
    rewarm: int | None = None,
    min_rounds: int = 5,
    rel_se: float = 0.01,
    desc: str | None = None,
    settled: Callable[[float, float], bool] | None = None,
) -> PairTiming:
    """Time ``b`` against ``a`` interleaved (a, b, a, b, ...) after warm-up, and return a :class:`PairTiming`.

    The ratio is of CPU time (:func:`cpu_clock`: at one thread the calling thread's own), which holds on a loaded
    machine where wall times drift. Rounds go on until the ratio's standard error (bootstrapped from the rounds'
    ratios) is at most ``rel_se`` of it, after at least ``min_rounds`` rounds and ``min_seconds`` seconds, and at
    most ``rounds`` (more for a model of milliseconds: ``min_seconds`` raises it). Each timed run follows
    ``rewarm`` untimed runs of the same model, so both are timed warm, as each runs deployed alone (a round robin
    charges the larger model the cache its neighbour evicted); None: 2 for a model of milliseconds, 1 under 0.1 s,
    none above (a run of seconds refills its caches itself). ``desc``: a progress bar with that label.
    ``settled(ratio, se)``: asked after every round from the third on; True stops the measurement there (a caller
    that only needs to know on which side of a band the ratio lies need not wait for the precision)."""
    sa, sb = _session(a, threads, False), _session(b, threads, False)
    fa, fb = _feed(sa, a), _feed(sb, b)
    t0 = time.perf_counter()
    warm = 1
    for i in range(3):
        sa.run(None, fa)
        sb.run(None, fb)
        if i == 0 and time.perf_counter() - t0 > 0.5:
            break  # models of a second or more are warm after one run
        warm = i + 1
    per_round = (time.perf_counter() - t0) / warm
    if rewarm is None:
        rewarm = 2 if per_round < 0.04 else 1 if per_round < 0.2 else 0
    rounds = max(rounds, min_rounds, int(min_seconds / max(per_round * (1 + rewarm), 1e-6)))
    clock = cpu_clock(threads)

    def timed(sess: Any, feed: dict[str, np.ndarray]) -> tuple[float, float]:
        for _ in range(rewarm):
            sess.run(None, feed)
        c0, t0 = clock(), time.perf_counter()
        sess.run(None, feed)
        return time.perf_counter() - t0, clock() - c0

    ta: list[float] = []
    tb: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    bar = progress(rounds, desc, "round") if desc else None
    try:
        for r in range(rounds):
            wa, ca = timed(sa, fa)
            wb, cb = timed(sb, fb)
            ta.append(wa * 1e3)
            tb.append(wb * 1e3)
            cpu.append(cb / max(ca, 1e-9))
            if bar is not None:
                bar.update(1)
            if r + 1 < 3 or time.perf_counter() - start < min_seconds:
                continue
            ratio, se = statistics.median(cpu), _bootstrap_se(cpu)
            if (r + 1 >= min_rounds and se <= rel_se * ratio) or (settled is not None and settled(ratio, se)):
                break
    finally:
        if bar is not None:
            bar.close()
    return PairTiming(
        statistics.median(ta), statistics.median(tb), statistics.median(cpu), _bootstrap_se(cpu), len(cpu)
    )
