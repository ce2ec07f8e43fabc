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

A table is cached by the model's fingerprint, the machine and the thread count. ``trtexec --exportProfile`` JSON
(per-layer times on the device; TensorRT names a fused layer ``"a + b"`` after its ONNX nodes) is imported with
``b_n = t_n`` for layers that carry a group: a Jetson user calibrates the budget with the device's own times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
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

log = logging.getLogger(__name__)

TABLE_VERSION = 1


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
    wall_ms: float  # the full model's measured latency
    overhead_ms: float
    nodes: list[NodeTime] = field(default_factory=list)
    version: int = TABLE_VERSION

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
    return root / f"{fingerprint(model)}-{machine_id()}-t{threads}.json"


# ---------------------------------------------------------------------------------------------------- profiling
def _session(
    model: onnx.ModelProto, threads: int, profile: bool, optimized: str | None = None, basic: bool = False
) -> Any:
    """A CPU session with onnxruntime's default (full) optimisation, as the model is deployed; ``basic``: only the
    basic graph rewrites (constant folding, redundant nodes), which builds in half the time, for sessions that are
    run a few times for their outputs rather than timed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = profile
    if optimized:
        so.optimized_model_filepath = optimized
    if profile:
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"vitseg_profile_{os.getpid()}")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _feed(sess: Any) -> dict[str, np.ndarray]:
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        out[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return out


def profile(
    model: onnx.ModelProto, threads: int = 2, runs: int = 10, warmup: int = 3
) -> tuple[dict, dict, float, float]:
    """``(median ms per node name, tensors per node name, median wall ms, median overhead ms)`` of ``model`` in
    onnxruntime (CPU). The overhead is, per profiled run, the run's time minus the sum of its node times: measured
    in the same run, so a load on the machine inflates both alike; the wall time is of a session that does not
    profile."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimized.onnx")
        sess = _session(model, threads, True, opt)
        feed = _feed(sess)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        trace = sess.end_profiling()
        try:
            events = json.loads(Path(trace).read_text())
        finally:
            Path(trace).unlink(missing_ok=True)
        spans = sorted(
            (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
        )[warmup:]
        start = spans[0][0] if spans else 0
        per: dict[str, list[float]] = {}
        in_run = [0.0] * len(spans)
        for e in events:
            name = e.get("name", "")
            if e.get("cat") == "Node" and name.endswith("_kernel_time") and e.get("ts", 0) >= start:
                per.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1e3)
                k = next((i for i, (a, b) in enumerate(spans) if a <= e["ts"] <= b), None)
                if k is not None:
                    in_run[k] += e["dur"] / 1e3
        overhead = statistics.median([(b - a) / 1e3 - t for (a, b), t in zip(spans, in_run)]) if spans else 0.0
        tensors: dict[str, list[str]] = {}
        # a node of the optimised graph stands for the nodes of ``model`` whose outputs it writes; the NCHWc layout
        # rewrite renames a conv's tensors but names the node after the output it replaces (``<output>_nchwc``)
        original = {o: [t for t in (*n.input, *n.output) if t] for n in model.graph.node for o in n.output if o}
        by_name = {n.name: [t for t in (*n.input, *n.output) if t] for n in model.graph.node if n.name}
        try:
            optimized = onnx.load(opt, load_external_data=False)
            for n in optimized.graph.node:
                own = [t for t in (*n.input, *n.output) if t]
                stands_for = [*n.output, n.name.removesuffix("_nchwc")]
                found = own + [t for o in stands_for for t in original.get(o, [])]
                # a fusion is named after the node it started from (``<node>/QuickGeluFusion/``), whose tensors
                # an NCHWc layout may have renamed
                name = n.name
                while name and name not in by_name and "/" in name:
                    name = name.rsplit("/", 1)[0]
                found += by_name.get(name, [])
                tensors[n.name] = list(dict.fromkeys(found))
        except Exception as exc:  # an optimised graph onnx cannot read: names only
            log.warning("could not read onnxruntime's optimised graph (%s); node tensors unknown", exc)
    times = {name: statistics.median(v) for name, v in per.items()}
    # the wall time of a session that does not profile (profiling itself costs time between the nodes)
    plain = _session(model, threads, False)
    walls = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        plain.run(None, feed)
        if i >= warmup:
            walls.append((time.perf_counter() - t0) * 1e3)
    return times, tensors, statistics.median(walls), max(0.0, overhead)


def fit_table(
    model: onnx.ModelProto,
    variants: Sequence[tuple[onnx.ModelProto, Callable[[Sequence[str]], float]]],
    threads: int = 2,
    runs: int = 10,
) -> LatencyTable:
    """Fit ``a_n, b_n`` per node of ``model`` from its profile and those of ``variants``.

    Each variant is ``(cut model, fraction(tensors))``: the product of kept fractions that the cut applies to a
    node carrying those tensors."""
    t_full, tensors, wall, overhead = profile(model, threads, runs)
    profiles = [(profile(v, threads, runs)[0], frac) for v, frac in variants]
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
        nodes.append(NodeTime(name, tens, t1 - b, b))
    return LatencyTable(fingerprint(model), machine_id(), threads, "onnxruntime", wall, overhead, nodes)


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


def measure_pair(
    a: onnx.ModelProto,
    b: onnx.ModelProto,
    threads: int = 2,
    rounds: int = 20,
    min_seconds: float = 0.0,
    rewarm: int = 2,
) -> tuple[float, float, float, float]:
    """``(median wall ms of a, of b, median ratio of b's to a's process CPU time, its standard error)``, timed
    interleaved (a, b, a, b, ...) after warm-up: the CPU-time ratio holds on a loaded machine, where wall times
    drift. The standard error of the median is bootstrapped from the rounds' ratios (on this 2-core VM, 0.006-0.013
    at a ratio of 0.35 over 20 rounds, the spread seen between repeated measurements of one file). Each timed run
    follows ``rewarm`` untimed runs of the same model, so both are timed warm, as each runs deployed alone
    (``runtime.bench`` measures the same way; its docstring has the figures). ``min_seconds`` raises the rounds for
    small models until the measurement (re-warming runs included) takes at least that long."""
    sa, sb = _session(a, threads, False), _session(b, threads, False)
    fa, fb = _feed(sa), _feed(sb)
    t0 = time.perf_counter()
    for _ in range(3):
        sa.run(None, fa)
        sb.run(None, fb)
    per_round = (time.perf_counter() - t0) / 3
    rounds = max(rounds, int(min_seconds / max(per_round * (1 + rewarm), 1e-6)))

    def timed(sess: Any, feed: dict[str, np.ndarray]) -> tuple[float, float]:
        for _ in range(rewarm):
            sess.run(None, feed)
        c0, t0 = time.process_time(), time.perf_counter()
        sess.run(None, feed)
        return time.perf_counter() - t0, time.process_time() - c0

    ta, tb, cpu = [], [], []
    for _ in range(rounds):
        wa, ca = timed(sa, fa)
        wb, cb = timed(sb, fb)
        ta.append(wa * 1e3)
        tb.append(wb * 1e3)
        cpu.append(cb / max(ca, 1e-9))
    ratios = np.asarray(cpu)
    resampled = np.random.default_rng(0).choice(ratios, (200, len(ratios)))
    se = float(np.median(resampled, axis=1).std())
    return statistics.median(ta), statistics.median(tb), statistics.median(cpu), se
