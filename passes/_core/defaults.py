"""The names and defaults a command line shows before onnx loads (``--help`` answers at once): pure data, no
imports. The unit kinds have their own table (:mod:`passes._core.kinds`)."""

from __future__ import annotations

#: what a structural pass removes when given no amount: half of each block's units (of each group's channels),
#: rounded down, every block keeping at least one. One number for every pass, easy to state; not tuned per model.
DEFAULT_RATIO = 0.5

#: onnxruntime threads latency is measured with by default: one thread's CPU time is what moves least with the
#: machine's load (no worker threads spinning while they wait, nothing shared between threads to contend for)
LATENCY_THREADS = 1

#: which part of a model may lose conv channels
SCOPES = ("all", "decoder", "backbone")

#: weight norms that rank units within a group
NORMS = ("l1", "l2")

#: how conv channels are ranked: a norm of their filters, or |gamma| of their BatchNormalization
CHANNEL_METHODS = (*NORMS, "bn_scale")
