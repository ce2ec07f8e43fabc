"""onnxruntime benchmark of one or more ONNX models, interleaved, with ratios to the first.

``python -m runtime.bench base.onnx small.onnx [--runs 50 --warmup 5 --rewarm 2 --threads 2 --providers cpu,cuda
--batch 1 --json bench.json] [--no-isolate] [--no-interleave]``

Order: every model's session is created first; then ``warmup`` untimed rounds and ``runs`` timed rounds go round
robin (model A run k, model B run k, ..., then run k+1), so a change of the machine's load (other processes,
thermal or frequency changes) hits every model alike instead of the one that happened to run at that moment.
``--no-interleave`` times the models one after the other (each: warm-up, then its runs).

Per model and run: wall time (``time.perf_counter``) and the CPU time of the process running the session
(``time.process_time``: user + system time of all its threads, onnxruntime's thread pool included) around one
``session.run`` on one seeded ``N(0, 1)`` input. Wall time is what a user waits; CPU time is the work done, and is
far less disturbed by other processes competing for the cores (a run that waits for a core counts wall time, not
CPU time). With ``--threads 1`` CPU time is at most the wall time; with more threads it can exceed it. Latency and
CPU statistics: median, p90 (numpy's linear-interpolated 90th percentile), min, mean and standard deviation in
milliseconds; images/s = batch / median latency; the peak resident memory of the process; the file size (external
data included); parameters and FLOPs read from the graph (``passes._core.stats.graph_stats``: FLOPs = 2 x
multiply-accumulates of MatMul/Gemm/Conv, per image). Ratios divide each model's numbers by the first model's
(``latency`` = median / median of the first, ``speedup`` its inverse, ``cpu`` = CPU median / CPU median of the
first); with interleaving, ``latency_paired`` and ``cpu_paired`` are the medians over the rounds of the per-round
ratios (each run divided by the first model's run of the same round), the least noisy comparison (``null``
without interleaving).

Memory: by default each model runs in its own Python subprocess (``isolated: true``), so ``peak_rss_mb`` (the
process's high-water mark, ``VmHWM`` on Linux) belongs to that model alone; ``session_rss_mb`` = peak minus the resident
size measured just before the session was created (imports excluded). The parent drives the workers one run at a
time over a pipe (the timing is taken inside the worker); all of them are alive together, so the machine needs the
memory of every session at once. With ``--no-isolate`` the models run in this process: the high-water mark then only
grows and says nothing per model, so the memory fields are ``null`` and the table has no memory column.

Warm runs: each timed run follows ``--rewarm`` (default 2) untimed runs of the same model, so that every model is
timed with its weights and buffers back in cache, as it runs when deployed alone. Without them, round robin charges
each model what the others evicted, a bias that grows with its weights and matters for small models. Measured on
``paper`` compressed to MobileViT-XXS's time at 64 px (about 1 ms, 1 thread; five models in the rotation): timed
alone (``--no-interleave``) it takes 0.96x the reference's CPU time; round robin without re-warming said 1.02-1.03x
in one process and 1.03-1.07x isolated; with one re-warming run 1.00-1.03x; with two 0.964-0.968x in one process
(0.98x isolated). ``--rewarm 0`` gives the cold round robin back, in a third of the time.

Providers: ``cuda`` is used when onnxruntime offers it (``CUDAExecutionProvider``), otherwise a warning and CPU; the
providers the session really used are recorded. Never required.

JSON schema (``schema_version`` 1; keys are only ever added, never renamed, in a later version)::

    {
      "schema_version": 1,
      "tool": "runtime.bench",
      "created": "<ISO 8601 UTC>",
      "machine": {"platform", "python", "onnxruntime", "cpu_count", "hostname"},
      "config": {"runs", "warmup", "threads", "providers", "batch", "seed", "isolate", "interleave", "rewarm"},
      "models": [
        {
          "name", "path", "file_bytes", "params", "flops",          # flops per image
          "providers": [...], "inputs": {name: shape}, "batch",
          "latency_ms": {"median", "p90", "min", "mean", "std"},
          "cpu_ms": {"median", "p90", "min", "mean", "std"},       # process CPU time per run
          "runs", "warmup", "images_per_s",
          "peak_rss_mb", "session_rss_mb", "isolated",              # memory: null unless isolated
          "ratios": {"latency", "speedup", "params", "flops", "file_bytes", "peak_rss", "session_rss",
                     "cpu", "latency_paired", "cpu_paired"}
        }
      ]
    }
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fileformat.args import Parser, non_negative_int, positive_int
from fileformat.cli import cli_main
from fileformat.errors import PassError
from fileformat.io import check_distinct

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_KEYS = (
    "name",
    "path",
    "file_bytes",
    "params",
    "flops",
    "providers",
    "inputs",
    "batch",
    "latency_ms",
    "cpu_ms",
    "runs",
    "warmup",
    "images_per_s",
    "peak_rss_mb",
    "session_rss_mb",
    "isolated",
    "ratios",
)
LATENCY_KEYS = ("median", "p90", "min", "mean", "std")
RATIO_KEYS = (
    "latency",
    "speedup",
    "params",
    "flops",
    "file_bytes",
    "peak_rss",
    "session_rss",
    "cpu",
    "latency_paired",
    "cpu_paired",
)
_RESULT_MARK = "@@BENCH_RESULT@@ "
_READY_MARK = "@@BENCH_READY@@ "
_RUN_MARK = "@@BENCH_RUN@@ "
_SHORT = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class BenchError(PassError):
    """A model that cannot be benchmarked (missing, unreadable, unloadable); the message says why."""


@dataclass
class BenchConfig:
    """How to benchmark. ``providers`` are short names (cpu, cuda, tensorrt) or onnxruntime provider names; ``None``
    means CUDA when present, else CPU. ``threads=None`` leaves onnxruntime's default (all cores)."""

    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    batch: int = 1
    seed: int = 0
    isolate: bool = True
    interleave: bool = True
    rewarm: int = 2  # untimed runs before each timed one (see "Warm runs" in the module docstring)

    def __post_init__(self) -> None:
        if (
            self.runs < 1
            or self.warmup < 0
            or self.rewarm < 0
            or self.batch < 1
            or (self.threads is not None and self.threads < 1)
        ):
            raise BenchError(
                f"invalid config: runs={self.runs} (>= 1), warmup={self.warmup} (>= 0), rewarm={self.rewarm} (>= 0), "
                f"batch={self.batch} (>= 1), threads={self.threads} (>= 1 or unset)"
            )


@dataclass
class ModelResult:
    """One model's numbers (see the module docstring for their meaning)."""

    name: str
    path: str
    file_bytes: int
    params: int
    flops: int
    providers: list[str]
    inputs: dict[str, list[int]]
    batch: int
    latency_ms: dict[str, float]
    cpu_ms: dict[str, float]
    runs: int
    warmup: int
    images_per_s: float
    peak_rss_mb: float | None  # None when the models share one process (not per model)
    session_rss_mb: float | None
    isolated: bool
    ratios: dict[str, float | None] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- helpers


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """onnxruntime provider names to use: the requested ones that are available (warning for the others), always
    ending with CPU; ``None`` = CUDA when available, then CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [_SHORT.get(p.lower(), p) for p in requested] if requested else [_SHORT["cuda"], _SHORT["cpu"]]
    out = []
    for p in wanted:
        if p in available:
            if p not in out:
                out.append(p)
        elif requested:
            log.warning("provider %s is not available in this onnxruntime (%s); skipped", p, sorted(available))
    if _SHORT["cpu"] not in out:
        out.append(_SHORT["cpu"])
    return out


def file_bytes(path: Path) -> int:
    """Size of the ``.onnx`` file plus the external data files its initializers point to."""
    import onnx

    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise BenchError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    seen = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = path.parent / entry.value
                if ext.is_file():
                    total += ext.stat().st_size
    return total


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory.

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this process image only. ``getrusage``'s ``ru_maxrss``
    is not used there: Linux carries the forking parent's peak across ``exec`` into it, so a worker started from a
    1 GB pytest process would report 1 GB. Elsewhere: ``ru_maxrss`` (bytes on macOS), or psutil's peak working set
    on Windows.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def _feed(session: Any, batch: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    feed: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for i, inp in enumerate(session.get_inputs()):
        shape = []
        for axis, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif axis == 0:
                shape.append(batch)
            else:
                raise BenchError(
                    f"input {inp.name!r} axis {axis} is dynamic ({d}); benchmark a model exported with a static size"
                )
        dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type, np.float32)
        if "int" in inp.type:
            feed[inp.name] = np.zeros(shape, np.int64 if "int64" in inp.type else np.int32)
        else:
            feed[inp.name] = np.random.default_rng(seed + i).standard_normal(shape).astype(dtype)
        shapes[inp.name] = shape
    return feed, shapes


def _stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {
        "median": float(np.median(ms)),
        "p90": float(np.percentile(ms, 90)),
        "min": float(ms.min()),
        "mean": float(ms.mean()),
        "std": float(ms.std()),
    }


class InProcessRunner:
    """One model's onnxruntime session in this process: ``load()``, then ``run_once()`` per run, then ``finish()``.

    The interface every runner has (tests inject fakes through :func:`benchmark`'s ``runner_factory``).
    """

    def __init__(self, path: Path, config: BenchConfig) -> None:
        self.path = Path(path)
        self.config = config
        self._session: Any = None
        self._feed: dict[str, np.ndarray] = {}
        self._info: dict[str, Any] = {}
        self._rss_before = 0

    def load(self) -> None:
        """Create the session and its input; raise :class:`BenchError` when onnxruntime cannot load the model."""
        from fileformat.session import SessionConfig, load_session

        self._rss_before = _rss_bytes()
        threads = self.config.threads or None
        config = SessionConfig(
            providers=tuple(resolve_providers(self.config.providers)),
            threads=threads,
            inter_threads=1 if threads else None,
            spinning=True,
        )
        try:
            self._session = load_session(self.path, config)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise BenchError(f"{self.path}: onnxruntime cannot load it ({exc})") from None
        self._feed, shapes = _feed(self._session, self.config.batch, self.config.seed)
        batch = next(iter(shapes.values()))[0] if shapes else self.config.batch
        if batch != self.config.batch:
            log.warning("%s: static batch %d used instead of --batch %d", self.path.name, batch, self.config.batch)
        self._info = {"providers": list(self._session.get_providers()), "inputs": shapes, "batch": int(batch)}

    def run_once(self) -> tuple[float, float]:
        """One timed ``session.run``, after ``config.rewarm`` untimed ones: (wall seconds, CPU seconds of this
        process)."""
        for _ in range(self.config.rewarm if self.config.interleave else 0):  # consecutive runs are warm already
            self._session.run(None, self._feed)
        c0, t0 = time.process_time(), time.perf_counter()
        self._session.run(None, self._feed)
        t1, c1 = time.perf_counter(), time.process_time()
        return t1 - t0, c1 - c0

    def finish(self) -> dict[str, Any]:
        """What is known about the session besides the timings: providers, inputs, batch and memory."""
        peak = _peak_rss_bytes()
        return {
            **self._info,
            "peak_rss_mb": peak / 2**20,
            "session_rss_mb": max(0, peak - self._rss_before) / 2**20,
        }

    def close(self) -> None:
        self._session = None


class SubprocessRunner:
    """The same interface, with the session in a fresh interpreter (``python -m runtime.bench --_serve``), so the
    memory high-water mark is this model's alone. Timings are taken inside the worker."""

    def __init__(self, path: Path, config: BenchConfig) -> None:
        self.path = Path(path)
        self.config = config
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None

    def _read(self, mark: str) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = self._proc.stdout.readline()
            if not line:
                self._proc.wait()
                self._stderr.seek(0)
                err = self._stderr.read().strip()[-800:]
                raise BenchError(f"{self.path}: the benchmark subprocess failed (exit {self._proc.returncode}): {err}")
            if line.startswith(_RESULT_MARK):  # an error report ends the worker
                payload = json.loads(line[len(_RESULT_MARK) :])
                if "error" in payload:
                    raise BenchError(payload["error"])
                if mark == _RESULT_MARK:
                    return json.dumps(payload)
            elif line.startswith(mark):
                return line[len(mark) :].strip()

    def _send(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone; _read reports why

    def load(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "runtime.bench", "--_serve", str(self.path)]
        cmd += ["--_config", json.dumps(asdict(self.config))]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        self._read(_READY_MARK)

    def run_once(self) -> tuple[float, float]:
        self._send("run")
        wall, cpu = self._read(_RUN_MARK).split()
        return float(wall), float(cpu)

    def finish(self) -> dict[str, Any]:
        self._send("done")
        return json.loads(self._read(_RESULT_MARK))

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    self._proc.stdin.close()  # type: ignore[union-attr]
                    self._proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                    self._proc.wait()
            self._proc.stdout.close()  # type: ignore[union-attr]
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


RunnerFactory = Callable[[Path, BenchConfig], Any]


def _default_runner(path: Path, config: BenchConfig) -> InProcessRunner | SubprocessRunner:
    return SubprocessRunner(path, config) if config.isolate else InProcessRunner(path, config)


def time_runners(runners: Sequence[Any], config: BenchConfig) -> list[tuple[list[float], list[float]]]:
    """Load every runner, then warm up and time them (round robin unless ``config.interleave`` is off).

    Returns per runner (wall seconds per timed run, CPU seconds per timed run), in run order.
    """
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in runners]
    if config.interleave:
        for r in runners:
            r.load()
        for _ in range(config.warmup):
            for r in runners:
                r.run_once()
        for _ in range(config.runs):
            for i, r in enumerate(runners):
                wall, cpu = r.run_once()
                times[i][0].append(wall)
                times[i][1].append(cpu)
        return times
    for i, r in enumerate(runners):
        r.load()
        for _ in range(config.warmup):
            r.run_once()
        for _ in range(config.runs):
            wall, cpu = r.run_once()
            times[i][0].append(wall)
            times[i][1].append(cpu)
    return times


def _timing(wall: Sequence[float], cpu: Sequence[float], info: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    latency = _stats_ms(wall)
    return {
        **info,
        "latency_ms": latency,
        "cpu_ms": _stats_ms(cpu),
        "runs": config.runs,
        "warmup": config.warmup,
        "images_per_s": 1e3 * info["batch"] / latency["median"],
    }


def measure(path: Path, config: BenchConfig) -> dict[str, Any]:
    """Time one model in this process: the latency, CPU time and memory part of a :class:`ModelResult` (a dict)."""
    runner = InProcessRunner(path, config)
    try:
        ((wall, cpu),) = time_runners([runner], config)
        return _timing(wall, cpu, runner.finish(), config)
    finally:
        runner.close()


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return float(a / b) if b else float("nan")


def _paired(xs: Sequence[float], base: Sequence[float]) -> float | None:
    """Median over rounds of ``xs[k] / base[k]`` (``None`` when a base run took no measurable time)."""
    if len(xs) != len(base) or not len(xs) or min(base) <= 0:
        return None
    return float(np.median(np.asarray(xs, np.float64) / np.asarray(base, np.float64)))


def benchmark(
    paths: Sequence[str | os.PathLike[str]],
    config: BenchConfig | None = None,
    *,
    runner_factory: RunnerFactory | None = None,
) -> dict[str, Any]:
    """Benchmark ``paths`` (interleaved by default) and return the JSON document described in the module docstring.

    ``runner_factory(path, config)`` makes the object that loads and runs one model (default: a subprocess per model
    with ``config.isolate``, else in this process); see :class:`InProcessRunner` for the interface.
    """
    import onnx
    import onnxruntime as ort

    from passes._core.stats import graph_stats

    cfg = config or BenchConfig()
    if not paths:
        raise BenchError("no model given")
    factory = runner_factory or _default_runner
    static: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BenchError(f"{path}: no such file")
        size = file_bytes(path)
        stats = graph_stats(onnx.load(str(path)))
        static.append({"name": path.name, "path": str(path), "file_bytes": size, "params": stats.params})
        static[-1]["flops"] = stats.flops
    log.info("benchmarking %d model(s), %s", len(static), "interleaved" if cfg.interleave else "one after the other")
    runners = [factory(Path(s["path"]), cfg) for s in static]
    try:
        times = time_runners(runners, cfg)
        infos = [r.finish() for r in runners]
    finally:
        for r in runners:
            r.close()
    results = [
        ModelResult(**s, isolated=cfg.isolate, **_timing(wall, cpu, info, cfg))
        for s, (wall, cpu), info in zip(static, times, infos)
    ]
    if not cfg.isolate:  # one process's high-water mark: the same number for every model, so none is given
        for r in results:
            r.peak_rss_mb = r.session_rss_mb = None
    base, (base_wall, base_cpu) = results[0], times[0]
    for r, (wall, cpu) in zip(results, times):
        r.ratios = {
            "latency": _ratio(r.latency_ms["median"], base.latency_ms["median"]),
            "speedup": _ratio(base.latency_ms["median"], r.latency_ms["median"]),
            "params": _ratio(r.params, base.params),
            "flops": _ratio(r.flops, base.flops),
            "file_bytes": _ratio(r.file_bytes, base.file_bytes),
            "peak_rss": _ratio(r.peak_rss_mb, base.peak_rss_mb),
            "session_rss": _ratio(r.session_rss_mb, base.session_rss_mb),
            "cpu": _ratio(r.cpu_ms["median"], base.cpu_ms["median"]),
            "latency_paired": _paired(wall, base_wall) if cfg.interleave else None,
            "cpu_paired": _paired(cpu, base_cpu) if cfg.interleave else None,
        }
    cfg_dict = asdict(cfg)
    cfg_dict["providers"] = list(cfg.providers) if cfg.providers else None
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "runtime.bench",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(),
            "hostname": socket.gethostname(),
        },
        "config": cfg_dict,
        "models": [asdict(r) for r in results],
    }


TABLE_WIDTH = 120  # the on-screen table's limit; every number is in the JSON


def format_table(doc: dict[str, Any]) -> str:
    """The on-screen table of a :func:`benchmark` result, at most :data:`TABLE_WIDTH` columns: size, median wall and
    CPU time, ratios to the first model (paired per round when interleaved) and, when each model ran in its own
    process, its peak memory. p90, min, images/s and the other ratios are in the JSON."""
    cfg = doc["config"]
    paired = cfg.get("interleave", False)
    isolated = all(m.get("isolated") and m.get("peak_rss_mb") is not None for m in doc["models"])
    cols = ["model", "params", "GFLOPs", "MB", "wall ms", "p90 ms", "CPU ms", "x wall", "x CPU"]
    if isolated:
        cols.append("peak MB")
    rows = []
    for m in doc["models"]:
        lat, r = m["latency_ms"], m["ratios"]
        x_wall = r.get("latency_paired") if paired else r.get("latency")
        x_cpu = r.get("cpu_paired") if paired else r.get("cpu")
        row = [
            m["name"],
            f"{m['params'] / 1e6:.2f}M",
            f"{m['flops'] / 1e9:.3f}",
            f"{m['file_bytes'] / 1e6:.2f}",
            f"{lat['median']:.2f}",
            f"{lat['p90']:.2f}",
            f"{m['cpu_ms']['median']:.2f}",
            _fmt_ratio(x_wall),
            _fmt_ratio(x_cpu),
        ]
        if isolated:
            row.append(f"{m['peak_rss_mb']:.0f}")
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    room = TABLE_WIDTH - sum(widths[1:]) - 2 * (len(cols) - 1)
    if widths[0] > room:  # long file names are shortened in the middle; the JSON has the paths
        widths[0] = max(len(cols[0]), room)
        for row in rows:
            if len(row[0]) > widths[0]:
                keep = widths[0] - 1
                row[0] = row[0][: (keep + 1) // 2] + "…" + row[0][len(row[0]) - keep // 2 :]
    providers = sorted({p for m in doc["models"] for p in m["providers"]})
    threads = cfg["threads"]
    thread_text = "threads: onnxruntime's default" if not threads else f"{threads} thread{'s' if threads > 1 else ''}"
    order = "interleaved round robin" if paired else "one model after the other"
    lines = [
        f"onnxruntime {doc['machine']['onnxruntime']}, {', '.join(providers)}, {thread_text}, batch {cfg['batch']}",
        f"{cfg['warmup']} warm-up + {cfg['runs']} timed runs, {order}; x = ratio to the first model"
        + (" (median of per-round ratios)" if paired else ""),
        "CPU ms = process CPU time per run; "
        + ("peak MB: each model in its own process" if isolated else "memory not measured per model (--no-isolate)"),
        "  ".join(c.ljust(w) for c, w in zip(cols, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m runtime.bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("models", nargs="*", help="ONNX files; ratios are to the first (the baseline)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per model")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed runs per model before the timed ones")
    p.add_argument(
        "--rewarm",
        type=non_negative_int,
        default=2,
        help="untimed runs of a model before each of its timed runs when interleaved, so it is timed warm (0: the "
        "cold round robin, a third of the time)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads (None: all cores)")
    p.add_argument(
        "--providers", default=None, help="comma list of cpu, cuda, tensorrt (None: cuda when available, then cpu)"
    )
    p.add_argument("--batch", type=positive_int, default=1, help="batch for a dynamic batch dimension")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random N(0, 1) input")
    p.add_argument("--json", default=None, help="also write the results here (JSON, schema_version 1)")
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="run every session in this process (faster start; memory is then not measured per model)",
    )
    p.add_argument(
        "--no-interleave",
        action="store_true",
        help="time the models one after the other instead of round robin (run k of every model, then run k+1)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    p.add_argument("--_serve", help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    return p


def _serve(path: str, config_json: str) -> int:
    """Worker of :class:`SubprocessRunner`: load the model, then answer ``run`` and ``done`` lines on stdin."""
    runner: InProcessRunner | None = None
    try:
        cfg_dict = json.loads(config_json)
        if cfg_dict.get("providers"):
            cfg_dict["providers"] = tuple(cfg_dict["providers"])
        runner = InProcessRunner(Path(path), BenchConfig(**cfg_dict))
        runner.load()
        print(_READY_MARK, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "run":
                wall, cpu = runner.run_once()
                print(f"{_RUN_MARK}{wall!r} {cpu!r}", flush=True)
            elif command == "done":
                print(_RESULT_MARK + json.dumps(runner.finish()), flush=True)
                break
    except BenchError as exc:
        print(_RESULT_MARK + json.dumps({"error": str(exc)}), flush=True)
    finally:
        if runner is not None:
            runner.close()
    return 0


@cli_main("python -m runtime.bench")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 success, 1 a model cannot be benchmarked, 2 usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args._serve:
        return _serve(args._serve, args._config or "{}")
    if not args.models:
        parser.error("give at least one ONNX model")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: directory does not exist")
    check_distinct(args.models, [("--json", args.json)])
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip()) if args.providers else None
    cfg = BenchConfig(
        runs=args.runs,
        warmup=args.warmup,
        rewarm=args.rewarm,
        threads=args.threads,
        providers=providers,
        batch=args.batch,
        seed=args.seed,
        isolate=not args.no_isolate,
        interleave=not args.no_interleave,
    )
    doc = benchmark(args.models, cfg)
    print(format_table(doc))
    if args.json:
        from fileformat.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
