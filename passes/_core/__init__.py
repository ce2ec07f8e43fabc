"""Shared machinery of the passes: the unit kinds and the one unit type, the coupled-dimension engine, cuts,
importance, budgets, latency, reports and the common command line. Imports nothing itself, so that the light
modules (:mod:`passes._core.kinds`) load without onnx."""
