"""Helpers of the op-rule tests: graphs written in ONNX text, a trace from one tensor, the cut against the oracle.

A test writes its graph in ONNX text (``onnx.parser``); :func:`parse` turns every graph input after the first into
a constant with seeded values, so weights need no literal data. Most rule tests put the op between two linear
layers, a *sandwich* (:func:`sandwich`): ``H = MatMul(X, W1)`` makes 8 units on H's last axis, the body computes
``A`` from ``H``, and ``Y = MatMul(A, W2)`` consumes them::

    X [1, 4, 6] --MatMul W1 [6, 8]--> H [1, 4, 8] --body--> A [1, 4, 8] --MatMul W2 [8, 5]--> Y [1, 4, 5]

:func:`check_cut` cuts a group and holds the result to the zeroing oracle (``passes._core.oracle.zero_groups``) on
onnxruntime, with a negative control: another choice of units must not match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.parser
import pytest
from _shared import run_ort as run
from onnx import numpy_helper

from passes._core.dims import Dim, DimGroup, Layout, TraceError, apply_groups, trace
from passes._core.finalize import finalize
from passes._core.graph import GraphView
from passes._core.oracle import zero_groups

ATOL = 1e-5


def parse(text: str, seed: int = 0) -> onnx.ModelProto:
    """The model written in ``text``; each graph input after the first becomes an initializer of its declared type
    and shape, seeded uniform in [0.5, 1.5) (positive, so Log, Sqrt and the like stay finite)."""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    data, *consts = list(model.graph.input)
    for vi in consts:
        t = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = [d.dim_value for d in t.shape.dim]
        model.graph.initializer.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(dtype), vi.name))
    del model.graph.input[:]
    model.graph.input.append(data)
    onnx.checker.check_model(model, full_check=True)
    return model


def sandwich(body: str, consts: str = "", inits: str = "", opset: int = 17, y: str = "[1,4,5]") -> str:
    """ONNX text of ``X -> MatMul W1 -> H -> body -> A -> MatMul W2 -> Y`` (see the module docstring). ``consts``:
    more seeded constants, as graph inputs (``", float[8] c"``); ``inits``: constants with their values, as the
    graph's initializer list (``"int64[3] s = {1, 4, 8}"``); ``y``: the shape of ``Y``."""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[1,4,6] X, float[6,8] W1, float[8,5] W2{consts}) => (float{y} Y) <{inits}> {{
        H = MatMul(X, W1)
        {body}
        Y = MatMul(A, W2)
    }}
    """


#: the units of a sandwich: H's last axis, 8 units
HIDDEN = ("H", Dim(2, ((8, True),)))


def trace_from(model: onnx.ModelProto, name: str, dim: Dim, **mode: bool) -> DimGroup:
    """The group traced from tensor ``name``'s unit axis ``dim`` (``mode``: ``width``, ``sums``, ``channels``)."""
    return trace(GraphView(model), name, dim, **mode)


def refusal(model: onnx.ModelProto, name: str, dim: Dim, **mode: bool) -> str:
    """The reason the trace from ``name`` stops (it must stop)."""
    with pytest.raises(TraceError) as info:
        trace_from(model, name, dim, **mode)
    return str(info.value)


def units(n: int) -> Layout:
    """The layout of an axis that is one unit factor of ``n`` units."""
    return ((n, True),)


def input_for(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    """A seeded input for the model's first input, uniform in [0.5, 1.5)."""
    t = model.graph.input[0].type.tensor_type
    shape = [d.dim_value for d in t.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(dtype)


@dataclass(frozen=True)
class Unit:
    """What the oracle reads of a unit: its group, and its kind (which weights it zeroes)."""

    id: str
    kind: str
    group: DimGroup


def cut(model: onnx.ModelProto, group: DimGroup, kept: Sequence[int]) -> onnx.ModelProto:
    """``model`` with ``kept`` units of ``group`` kept (``apply_groups``, then the passes' finalize checks)."""
    return finalize(apply_groups(model, GraphView(model), [(group, kept)]))


def check_cut(model: onnx.ModelProto, group: DimGroup, kept: Sequence[int], kind: str = "neurons") -> onnx.ModelProto:
    """Cut ``kept`` units of ``group`` and assert the output equals the zeroing oracle's for ``kind`` (``neurons``,
    ``heads``, ``channels``: the consuming weights zeroed; ``head_dim``: every carrying constant zeroed). Where the
    cut changes the output, another choice of units (the removed ones shifted by one) must not match."""
    pruned = cut(model, group, kept)
    removed = [u for u in range(group.count) if u not in kept]
    x = input_for(model)
    got = run(pruned, x)
    oracle = run(zero_groups(model, [(Unit("rule", kind, group), removed)]), x)
    assert got.shape == oracle.shape
    np.testing.assert_allclose(got, oracle, atol=ATOL, rtol=1e-5)
    shifted = sorted({(u + 1) % group.count for u in removed})
    if np.abs(got - run(model, x)).max() > 1e-3 and shifted != removed:
        wrong = run(zero_groups(model, [(Unit("rule", kind, group), shifted)]), x)
        assert np.abs(got - wrong).max() > 1e-4, "the negative control matched: the test proves nothing"
    return pruned


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of initializer ``name``."""
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
