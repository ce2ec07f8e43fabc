"""onnxruntime benchmark of one or more ONNX models, with ratios to the first.

``python -m runtime.bench base.onnx small.onnx [--runs 50 --warmup 5 --threads 2 --providers cpu,cuda --batch 1
--json bench.json] [--no-isolate]``

Per model: ``warmup`` untimed runs, then ``runs`` timed ``session.run`` calls on one seeded ``N(0, 1)`` input
(``time.perf_counter`` around each call); latency median, p90 (numpy's linear-interpolated 90th percentile), min, mean
and standard deviation in milliseconds; images/s = batch / median; the peak resident memory of the process; the file
size (external data included); parameters and FLOPs read from the graph (``passes._core.stats.graph_stats``: FLOPs =
2 x multiply-accumulates of MatMul/Gemm/Conv, per image). Ratios divide each model's numbers by the first model's
(``latency`` = median / median of the first; ``speedup`` is its inverse).

Memory: by default each model runs in its own Python subprocess (``isolated: true``), so ``peak_rss_mb`` (the
process's high-water mark, ``VmHWM`` on Linux) belongs to that model alone; ``session_rss_mb`` = peak minus the resident
size measured just before the session was created (imports excluded). With ``--no-isolate`` the models run in this
process, one after the other: the high-water mark then only grows and the memory numbers are not per model.

Providers: ``cuda`` is used when onnxruntime offers it (``CUDAExecutionProvider``), otherwise a warning and CPU; the
providers the session really used are recorded. Never required.

JSON schema (``schema_version`` 1; keys are only ever added, never renamed, in a later version)::

    {
      "schema_version": 1,
      "tool": "runtime.bench",
      "created": "<ISO 8601 UTC>",
      "machine": {"platform", "python", "onnxruntime", "cpu_count", "hostname"},
      "config": {"runs", "warmup", "threads", "providers", "batch", "seed", "isolate"},
      "models": [
        {
          "name", "path", "file_bytes", "params", "flops",          # flops per image
          "providers": [...], "inputs": {name: shape}, "batch",
          "latency_ms": {"median", "p90", "min", "mean", "std"},
          "runs", "warmup", "images_per_s",
          "peak_rss_mb", "session_rss_mb", "isolated",
          "ratios": {"latency", "speedup", "params", "flops", "file_bytes", "peak_rss", "session_rss"}
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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fileformat.cli import cli_main
from fileformat.errors import UsageError
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
    "runs",
    "warmup",
    "images_per_s",
    "peak_rss_mb",
    "session_rss_mb",
    "isolated",
    "ratios",
)
LATENCY_KEYS = ("median", "p90", "min", "mean", "std")
RATIO_KEYS = ("latency", "speedup", "params", "flops", "file_bytes", "peak_rss", "session_rss")
_RESULT_MARK = "@@BENCH_RESULT@@ "
_SHORT = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class BenchError(Exception):
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

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.batch < 1 or (self.threads is not None and self.threads < 1):
            raise BenchError(
                f"invalid config: runs={self.runs} (>= 1), warmup={self.warmup} (>= 0), batch={self.batch} (>= 1), "
                f"threads={self.threads} (>= 1 or unset)"
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
    runs: int
    warmup: int
    images_per_s: float
    peak_rss_mb: float
    session_rss_mb: float
    isolated: bool
    ratios: dict[str, float] = field(default_factory=dict)


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


def measure(path: Path, config: BenchConfig) -> dict[str, Any]:
    """Time one model in this process: the latency and memory part of a :class:`ModelResult` (as a dict)."""
    import onnxruntime as ort

    rss_before = _rss_bytes()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if config.threads:
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
    providers = resolve_providers(config.providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise BenchError(f"{path}: onnxruntime cannot load it ({exc})") from None
    feed, shapes = _feed(session, config.batch, config.seed)
    batch = next(iter(shapes.values()))[0] if shapes else config.batch
    if batch != config.batch:
        log.warning("%s: static batch %d used instead of --batch %d", path.name, batch, config.batch)
    for _ in range(config.warmup):
        session.run(None, feed)
    times = np.empty(config.runs, np.float64)
    for i in range(config.runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    peak = _peak_rss_bytes()
    median = float(np.median(ms))
    return {
        "providers": list(session.get_providers()),
        "inputs": shapes,
        "batch": int(batch),
        "latency_ms": {
            "median": median,
            "p90": float(np.percentile(ms, 90)),
            "min": float(ms.min()),
            "mean": float(ms.mean()),
            "std": float(ms.std()),
        },
        "runs": config.runs,
        "warmup": config.warmup,
        "images_per_s": 1e3 * batch / median,
        "peak_rss_mb": peak / 2**20,
        "session_rss_mb": max(0, peak - rss_before) / 2**20,
    }


def _measure_subprocess(path: Path, config: BenchConfig) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so the memory high-water mark is this model's alone."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "runtime.bench", "--_worker", str(path), "--_config", json.dumps(asdict(config))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_MARK):
            payload = json.loads(line[len(_RESULT_MARK) :])
            if "error" in payload:
                raise BenchError(payload["error"])
            return payload
    raise BenchError(f"{path}: the benchmark subprocess failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def benchmark(paths: Sequence[str | os.PathLike[str]], config: BenchConfig | None = None) -> dict[str, Any]:
    """Benchmark ``paths`` in order and return the JSON document described in the module docstring."""
    import onnx
    import onnxruntime as ort

    from passes._core.stats import graph_stats

    cfg = config or BenchConfig()
    if not paths:
        raise BenchError("no model given")
    results: list[ModelResult] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BenchError(f"{path}: no such file")
        size = file_bytes(path)
        stats = graph_stats(onnx.load(str(path)))
        log.info("benchmarking %s", path)
        timing = _measure_subprocess(path, cfg) if cfg.isolate else measure(path, cfg)
        results.append(
            ModelResult(
                name=path.name,
                path=str(path),
                file_bytes=size,
                params=stats.params,
                flops=stats.flops,
                isolated=cfg.isolate,
                **timing,
            )
        )
    base = results[0]
    for r in results:
        r.ratios = {
            "latency": _ratio(r.latency_ms["median"], base.latency_ms["median"]),
            "speedup": _ratio(base.latency_ms["median"], r.latency_ms["median"]),
            "params": _ratio(r.params, base.params),
            "flops": _ratio(r.flops, base.flops),
            "file_bytes": _ratio(r.file_bytes, base.file_bytes),
            "peak_rss": _ratio(r.peak_rss_mb, base.peak_rss_mb),
            "session_rss": _ratio(r.session_rss_mb, base.session_rss_mb),
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


def format_table(doc: dict[str, Any]) -> str:
    """The on-screen table of a :func:`benchmark` result."""
    cols = [
        "model",
        "params",
        "GFLOPs",
        "MB",
        "median ms",
        "p90 ms",
        "min ms",
        "img/s",
        "peak MB",
        "x latency",
        "x params",
        "x FLOPs",
    ]
    rows = []
    for m in doc["models"]:
        lat, r = m["latency_ms"], m["ratios"]
        rows.append(
            [
                m["name"],
                f"{m['params'] / 1e6:.2f}M",
                f"{m['flops'] / 1e9:.3f}",
                f"{m['file_bytes'] / 1e6:.2f}",
                f"{lat['median']:.2f}",
                f"{lat['p90']:.2f}",
                f"{lat['min']:.2f}",
                f"{m['images_per_s']:.1f}",
                f"{m['peak_rss_mb']:.0f}",
                f"{r['latency']:.3f}",
                f"{r['params']:.3f}",
                f"{r['flops']:.3f}",
            ]
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    cfg = doc["config"]
    providers = sorted({p for m in doc["models"] for p in m["providers"]})
    lines = [
        f"onnxruntime {doc['machine']['onnxruntime']}, {', '.join(providers)}, threads {cfg['threads'] or 'default'}, "
        f"batch {cfg['batch']}, {cfg['warmup']} warm-up + {cfg['runs']} timed runs, "
        f"memory {'per model (subprocess)' if cfg['isolate'] else 'NOT isolated (one process)'}",
        "  ".join(c.ljust(w) for c, w in zip(cols, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="ONNX files; ratios are to the first")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--providers", default=None, help="comma list: cpu,cuda,tensorrt (default: cuda if present, cpu)")
    p.add_argument("--batch", type=int, default=1, help="batch for a dynamic batch dimension (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--json", help="write the results here (JSON, schema_version 1)")
    p.add_argument("--no-isolate", action="store_true", help="run in this process (memory numbers not per model)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    return p


def _worker(path: str, config_json: str) -> int:
    try:
        cfg_dict = json.loads(config_json)
        if cfg_dict.get("providers"):
            cfg_dict["providers"] = tuple(cfg_dict["providers"])
        payload = measure(Path(path), BenchConfig(**cfg_dict))
    except BenchError as exc:
        payload = {"error": str(exc)}
    print(_RESULT_MARK + json.dumps(payload), flush=True)
    return 0


@cli_main("python -m runtime.bench")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 success, 1 a model cannot be benchmarked, 2 usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args._worker:
        return _worker(args._worker, args._config or "{}")
    if not args.models:
        parser.error("give at least one ONNX model")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: directory does not exist")
    try:
        check_distinct(args.models, [("--json", args.json)])
    except UsageError as exc:
        parser.error(str(exc))
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip()) if args.providers else None
    if args.runs < 1 or args.warmup < 0 or args.batch < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--runs, --batch and --threads must be >= 1, --warmup >= 0")
    try:
        cfg = BenchConfig(
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            providers=providers,
            batch=args.batch,
            seed=args.seed,
            isolate=not args.no_isolate,
        )
        doc = benchmark(args.models, cfg)
    except BenchError as exc:
        print(f"error: {parser.prog}: {exc}", file=sys.stderr)
        return 1
    print(format_table(doc))
    if args.json:
        from fileformat.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
