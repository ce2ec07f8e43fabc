"""The one place an onnxruntime session is built (Polygraphy's ``SessionFromOnnx``, for this toolchain).

Every command and library function that runs a model on onnxruntime calls :func:`load_session` with a
:class:`SessionConfig` saying what it needs: execution providers, threads, the graph optimisation level, profiling
and its file prefix, a path for onnxruntime's optimised model, whether worker threads spin while they wait, and
onnxruntime's log severity. onnxruntime is imported inside the function, so importing this module costs nothing
(``--help`` of every command answers before onnxruntime loads).

Defaults: the CPU provider, onnxruntime's own thread counts and optimisation level (all), no profiling, worker
threads that do **not** spin (a spinning thread's CPU time grows with the machine's load, not with the model's
work; ``spinning=True`` keeps onnxruntime's default, which spins), and errors only in onnxruntime's session log
(``log_severity=3``; ``None`` keeps the process default that ``onnxruntime.set_default_logger_severity`` sets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import onnx

__all__ = ["OPTIMIZATION_LEVELS", "SessionConfig", "load_session", "provider_names"]

#: ``SessionConfig.optimization`` values, each the onnxruntime ``GraphOptimizationLevel`` of the same name
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

Optimization = Literal["disable", "basic", "extended", "all"]

_SHORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_names(providers: Sequence[str] | None) -> tuple[str, ...]:
    """Expand short names (``cpu``, ``cuda``, ``tensorrt``) to onnxruntime provider names; none given: the CPU."""
    if not providers:
        return ("CPUExecutionProvider",)
    return tuple(_SHORT_PROVIDERS.get(p.lower(), p) for p in providers)


@dataclass(frozen=True)
class SessionConfig:
    """How :func:`load_session` builds a session.

    Attributes:
        providers: onnxruntime execution providers, in order of preference (full names; see :func:`provider_names`).
        threads: intra-op threads; ``None`` (or 0): onnxruntime's choice (one per physical core).
        inter_threads: inter-op threads; ``None``: onnxruntime's choice (unused in sequential execution).
        optimization: graph optimisation level (:data:`OPTIMIZATION_LEVELS`); ``None``: onnxruntime's default
            (``all``).
        profile_prefix: turn onnxruntime's profiler on, writing ``PREFIX_<date>.json`` (``end_profiling()`` returns
            the path); ``None``: no profiling.
        optimized_model_path: where onnxruntime writes the graph it optimised (for ``passes.optimize --ort-offline``
            and latency tables); ``None``: not written.
        spinning: let worker threads spin while they wait (onnxruntime's default); off by default.
        log_severity: onnxruntime's session log level (0 verbose .. 4 fatal); ``None``: the process default.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    inter_threads: int | None = None
    optimization: Optimization | None = None
    profile_prefix: str | None = None
    optimized_model_path: str | None = None
    spinning: bool = False
    log_severity: int | None = 3


def _options(config: SessionConfig) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    if config.optimization is not None:
        if config.optimization not in levels:
            raise ValueError(f"optimization {config.optimization!r}: choose one of {', '.join(OPTIMIZATION_LEVELS)}")
        options.graph_optimization_level = levels[config.optimization]
    if config.threads:
        options.intra_op_num_threads = int(config.threads)
    if config.inter_threads:
        options.inter_op_num_threads = int(config.inter_threads)
    if not config.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if config.log_severity is not None:
        options.log_severity_level = int(config.log_severity)
    if config.profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(config.profile_prefix)
    if config.optimized_model_path is not None:
        options.optimized_model_filepath = str(config.optimized_model_path)
    return options


def load_session(model: onnx.ModelProto | bytes | str | os.PathLike[str], config: SessionConfig | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (a proto, its serialized bytes, or a file path: external
    data is then found beside the file), built as ``config`` says (default :class:`SessionConfig`).

    onnxruntime's own exceptions propagate: the caller says what a model that does not load means for it.
    """
    import onnxruntime as ort

    cfg = config or SessionConfig()
    if isinstance(model, bytes):
        source: bytes | str = model
    elif isinstance(model, str | os.PathLike):
        source = os.fspath(model)
    else:
        source = model.SerializeToString()
    return ort.InferenceSession(source, sess_options=_options(cfg), providers=list(cfg.providers))
