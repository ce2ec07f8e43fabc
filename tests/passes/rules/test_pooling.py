"""Pooling rules (passes/_core/dims/rules/pooling.py): pools, Resize and Upsample work per channel; a ``sizes`` entry
for the channels follows the kept count."""

from __future__ import annotations

import pytest
from _helpers_rules import check_cut, initializer, parse, refusal, trace_from

from passes._core.dims import Dim

OPS = [
    "AveragePool",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "LpPool",
    "MaxPool",
    "Resize",
    "Upsample",
]

CHANNELS = ("H", Dim(1, ((8, True),)))


def _convs(node: str, out: int, inits: str = "", opset: int = 17) -> str:
    """``X -> Conv W1 -> H [1, 8, 8, 8] -> node -> A [1, 8, out, out] -> Conv W2 -> Y``."""
    return f"""
    <ir_version: {8 if opset > 9 else 4}, opset_import: ["" : {opset}]>
    g (float[1,3,8,8] X, float[8,3,1,1] W1, float[5,8,1,1] W2) => (float[1,5,{out},{out}] Y) <{inits}> {{
        H = Conv(X, W1)
        {node}
        Y = Conv(A, W2)
    }}
    """


def test_maxpool_passes_the_channels() -> None:
    """The worked example of docs/architecture.md, "Adding an op rule"."""
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] X, float[8,3,1,1] W1, float[5,8,1,1] W2) => (float[1,5,4,4] Y) {
            H = Conv(X, W1)
            A, I = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(H)
            Y = Conv(A, W2)
        }
    """)
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert group.dims["A"] == Dim(1, ((8, True),)) and "I" not in group.dims
    check_cut(model, group, [0, 2, 3, 7], kind="channels")


_POOLS = {
    "MaxPool": ("A, I = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(H)", 4),  # with its indices output
    "AveragePool": ("A = AveragePool<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>(H)", 8),
    "LpPool": ("A = LpPool<kernel_shape = [2, 2], strides = [2, 2], p = 2>(H)", 4),
    "GlobalAveragePool": ("A = GlobalAveragePool(H)", 1),
    "GlobalMaxPool": ("A = GlobalMaxPool(H)", 1),
    "GlobalLpPool": ("A = GlobalLpPool(H)", 1),
}


@pytest.mark.parametrize("op", sorted(_POOLS))
def test_pools_pass_the_channels(op: str) -> None:
    node, out = _POOLS[op]
    model = parse(_convs(node, out))
    group = trace_from(model, *CHANNELS, channels=True)
    assert group.dims["A"] == Dim(1, ((8, True),)) and "I" not in group.dims
    check_cut(model, group, [0, 2, 3, 7], kind="channels")


@pytest.mark.parametrize("op", sorted(_POOLS))
def test_pools_refuse_a_spatial_unit(op: str) -> None:
    """The channels moved to a spatial axis (a transpose) are pooled over: refused."""
    node, out = _POOLS[op]
    node = "T = Transpose<perm = [0, 2, 1, 3]>(H)\n" + node.replace("(H)", "(T)")
    assert "pools over the unit axis" in refusal(parse(_convs(node, out)), *CHANNELS, channels=True)


def test_resize_by_scales_passes_the_channels() -> None:
    model = parse(_convs('A = Resize<mode = "nearest">(H, , sc)', 16, "float[4] sc = {1.0, 1.0, 2.0, 2.0}"))
    group = trace_from(model, *CHANNELS, channels=True)
    assert not group.shape_edits and "sc" not in group.slices
    check_cut(model, group, [1, 6], kind="channels")


@pytest.mark.parametrize(
    ("inits", "axes", "position"),
    [("int64[4] sz = {1, 8, 16, 16}", "", 1), ("int64[3] sz = {8, 16, 16}", ", axes = [1, 2, 3]", 0)],
)
def test_resize_by_sizes_rewrites_the_channel_entry(inits: str, axes: str, position: int) -> None:
    """``sizes`` holds the channel count (at its position among ``axes``, opset 18): it follows the kept count."""
    model = parse(_convs(f'A = Resize<mode = "nearest"{axes}>(H, , , sz)', 16, inits, opset=18))
    group = trace_from(model, *CHANNELS, channels=True)
    assert [(e.input, e.position) for e in group.shape_edits] == [(3, position)]
    pruned = check_cut(model, group, [2, 3, 5], kind="channels")
    resize = next(n for n in pruned.graph.node if n.op_type == "Resize")
    assert initializer(pruned, resize.input[3]).tolist()[position] == 3


def test_resize_by_sizes_of_the_spatial_axes_only_leaves_them_alone() -> None:
    model = parse(_convs('A = Resize<mode = "nearest", axes = [2, 3]>(H, , , sz)', 16, "int64[2] sz = {16, 16}", 18))
    group = trace_from(model, *CHANNELS, channels=True)
    assert not group.shape_edits
    check_cut(model, group, [4], kind="channels")


def test_resize_of_the_unit_axis_is_refused() -> None:
    text = _convs('A = Resize<mode = "nearest">(H, , sc)', 8, "float[4] sc = {1.0, 2.0, 1.0, 1.0}")
    model = parse(text.replace("float[5,8,1,1] W2", "float[5,16,1,1] W2"))
    assert "resizes the unit axis" in refusal(model, *CHANNELS, channels=True)


def test_upsample_passes_the_channels() -> None:
    model = parse(_convs('A = Upsample<mode = "nearest">(H, sc)', 16, "float[4] sc = {1.0, 1.0, 2.0, 2.0}", opset=9))
    group = trace_from(model, *CHANNELS, channels=True)
    check_cut(model, group, [0, 1, 2], kind="channels")
