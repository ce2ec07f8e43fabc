"""Shared machinery of the passes: model I/O, the common CLI, reports, graph statistics, finalisation."""

from fileformat.errors import PassError
from fileformat.io import load_model, save_model
from passes._core.finalize import finalize
from passes._core.report import PassReport
from passes._core.stats import GraphStats, graph_stats

__all__ = ["GraphStats", "PassError", "PassReport", "finalize", "graph_stats", "load_model", "save_model"]
