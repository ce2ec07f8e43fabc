"""The coupled-dimension engine: layouts, reshape mapping, tracing rules, skips, the shape evaluator, finalize."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _helpers_prune import mha_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from passes._core.budget import select_top
from passes._core.canonical import canonicalize
from passes._core.dims import (
    Dim,
    Parts,
    TraceError,
    apply_groups,
    canonical,
    kept_positions,
    layout_size,
    map_reshape,
    trace,
    unit_copies,
    unit_count,
    unit_positions,
    unit_share,
)
from passes._core.finalize import finalize
from passes._core.graph import GraphView
from passes._core.unit import keep_count
from passes._core.units import find_attention_blocks, find_mlps
from passes.prune_heads import PruneHeadsConfig, prune_heads, zero_heads


def test_canonical_merges_carried_factors_and_drops_ones() -> None:
    assert canonical(((2, False), (3, False), (4, True), (1, False), (5, False))) == ((6, False), (4, True), (5, False))


def test_kept_positions_of_fused_qkv_columns() -> None:
    # 3 (q/k/v) x 4 heads x 2 head_dim; keeping heads 1 and 3 keeps columns of those heads in q, k and v
    got = kept_positions(((3, False), (4, True), (2, False)), [1, 3]).tolist()
    assert got == [2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23]


def test_map_reshape_split_merge_and_folded_heads() -> None:
    qkv = ((3, False), (4, True), (16, False))
    # [4, 16, 192] -> [4, 16, 3, 4, 16]: the head factor lands alone on axis 3 (4 == batch x patches: same value)
    assert map_reshape([4, 16, 192], 2, qkv, [4, 16, 3, 4, 16]) == Dim(3, ((4, True),))
    # dynamo: [4, 4, 16, 16] -> [-1 = 16, 16, 16]: heads fold into the leading axis with the batch
    assert map_reshape([4, 4, 16, 16], 1, ((4, True),), [16, 16, 16]) == Dim(0, ((4, False), (4, True)))
    # and back: [16, 16, 16] -> [4, 4, 16, 16]
    assert map_reshape([16, 16, 16], 0, ((4, False), (4, True)), [4, 4, 16, 16]) == Dim(1, ((4, True),))
    # merge heads x head_dim for the output projection
    assert map_reshape([4, 16, 4, 16], 2, ((4, True),), [4, 16, 64]) == Dim(2, ((4, True), (16, False)))


def test_map_reshape_refuses_to_split_the_unit_factor() -> None:
    with pytest.raises(TraceError, match="splits the unit axis"):
        map_reshape([2, 8], 1, ((8, True),), [2, 2, 4])


def test_trace_collects_weights_shapes_and_costs() -> None:
    model = mha_model(dim=16, heads=4, tokens=5)
    view = GraphView(model)
    group = trace(view, "b0_a", Dim(1, ((4, True),)))
    assert set(group.slices) == {"b0_wqkv", "b0_bqkv", "b0_wproj"}
    assert group.slices["b0_wqkv"].axis == 1 and group.slices["b0_wproj"].axis == 0
    assert group.sources == ["b0_wqkv"] and group.sinks == ["b0_wproj"]
    # both shape vectors are rewritten at the head position only: [2,5,3,4,4] at 3 and [2,5,16] at 2
    assert sorted((e.position, e.value) for e in group.shape_edits) == [(2, (2, 5, 16)), (3, (2, 5, 3, 4, 4))]
    # FLOPs of the group: qkv 2*2*5*48*16, scores 2*2*4*5*5*4, context 2*2*4*5*4*5, proj 2*2*5*16*16
    assert group.flops == 2 * (2 * 5 * 48 * 16) + 2 * (2 * 4 * 5 * 5 * 4) * 2 + 2 * (2 * 5 * 16 * 16)
    assert group.params == 16 * 48 + 48 + 16 * 16


def test_apply_groups_equals_zeroed_projection_and_leaves_input_alone() -> None:
    model = mha_model(dim=16, heads=4, tokens=5, blocks=2)
    before = model.SerializeToString()
    blocks = find_attention_blocks(model)
    assert [b.num_heads for b in blocks] == [4, 4] and all(b.prunable for b in blocks)
    keep = {blocks[0].id: [0, 2], blocks[1].id: [3]}
    view = blocks[0].view
    pruned = finalize(apply_groups(view.model, view, [(b.group, keep[b.id]) for b in blocks]))
    assert model.SerializeToString() == before
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    w = {t.name: t for t in zeroed.graph.initializer}
    for b, name in ((blocks[0], "b0_wproj"), (blocks[1], "b1_wproj")):
        arr = numpy_helper.to_array(w[name]).copy()
        for h in set(range(4)) - set(keep[b.id]):
            arr[h * 4 : (h + 1) * 4] = 0
        w[name].CopyFrom(numpy_helper.from_array(arr, name))
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    got, ref, orig = run_ort(pruned, x), run_ort(zeroed, x), run_ort(model, x)
    assert np.abs(got - ref).max() <= 1e-5
    assert np.abs(got - orig).max() > 1e-2  # the heads mattered
    sizes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert sizes["b0_wqkv"] == [16, 24] and sizes["b1_wqkv"] == [16, 12] and sizes["b1_wproj"] == [4, 16]


def test_weight_stored_once_for_two_blocks_is_cut_per_block() -> None:
    """An exporter stores equal weights once; an inference graph has no tied weights, so each block is cut alone."""
    model = mha_model(blocks=2, share_proj=True)
    blocks = find_attention_blocks(model)
    assert len(blocks) == 2 and all(b.prunable for b in blocks)
    keep = {blocks[0].id: [0, 2], blocks[1].id: [1]}
    pruned, report = prune_heads(model, PruneHeadsConfig(keep_sets=keep))
    assert report.modified
    zeroed = model
    for b in blocks:
        zeroed = zero_heads(zeroed, b, sorted(set(range(4)) - set(keep[b.id])))
    control = zero_heads(zero_heads(model, blocks[0], [0, 2]), blocks[1], [1])
    x = np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32)
    got, ref, wrong = run_ort(pruned, x), run_ort(zeroed, x), run_ort(control, x)
    assert np.abs(got - ref).max() <= 1e-5
    assert np.abs(got - wrong).max() > 1e-3


def test_runtime_shape_from_dynamic_batch_is_cut_where_it_is_built() -> None:
    """A reshape target built at run time from a dynamic batch (``Concat(Shape(x)[:1], [5, 3, 4, 4])``): the block is
    traced with the batch bound to 1, the heads' entry is rewritten in the Concat that builds the vector, and the
    file runs at any batch, equal to the zeroing oracle."""
    model = mha_model(dynamic_batch=True)
    (block,) = find_attention_blocks(model)
    assert block.prunable, block.skip_reason
    pruned, _ = prune_heads(model, PruneHeadsConfig(keep_sets={block.id: [1, 2]}))
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # still a dynamic batch
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 16)).astype(np.float32)
        assert np.abs(run_ort(pruned, x) - run_ort(zero_heads(model, block, [0, 3]), x)).max() <= 1e-5


def test_trace_refuses_a_shape_vector_it_cannot_compute() -> None:
    """Tracing from the static qkv reshape of a dynamic model: its Concat(Shape(x)[:1], ...) cannot be folded."""
    model = mha_model(dynamic_batch=True)
    view = GraphView(model)
    view._shapes.update({"b0_qkv": [2, 5, 48], "b0_qkv5": [2, 5, 3, 4, 4]})  # pretend the sizes were known
    with pytest.raises(TraceError, match="computed at run time"):
        trace(view, "b0_qkv5", Dim(3, ((4, True),)))


def test_head_count_read_at_run_time_of_a_static_model_is_folded_and_cut() -> None:
    """Shape(scores)[1] * head_dim with static shapes is a constant in canonical form: the block is cut exactly."""
    model = mha_model(read_head_count=True)
    (block,) = find_attention_blocks(model)
    assert block.prunable, block.skip_reason
    assert "b0_ss" not in {o for n in block.view.model.graph.node for o in n.output}  # the Shape node is gone
    pruned, _ = prune_heads(model, PruneHeadsConfig(keep_sets={block.id: [1, 2]}))
    x = np.random.default_rng(4).standard_normal((2, 5, 16)).astype(np.float32)
    ref = run_ort(zero_heads(model, block, [0, 3]), x)
    assert np.abs(run_ort(pruned, x) - ref).max() <= 1e-5


def test_shape_read_of_head_dim_is_allowed() -> None:
    """The legacy exporter's scale chain reads Shape(q)[-1] (head_dim): unchanged by head removal, so allowed."""
    model = mha_model()
    g = model.graph
    # q * 1/sqrt(Shape(q)[-1]) instead of the constant scale
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "m1"),
            numpy_helper.from_array(np.array([2**62], dtype=np.int64), "big"),
        ]
    )
    extra = [
        helper.make_node("Shape", ["b0_q"], ["qs"]),
        helper.make_node("Slice", ["qs", "m1", "big"], ["hdim"]),
        helper.make_node("Cast", ["hdim"], ["hdf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["hdf"], ["sq"]),
        helper.make_node("Div", ["b0_q", "sq"], ["b0_qs"]),
    ]
    nodes = [n for n in g.node if n.output[0] != "b0_qs"]
    at = next(i for i, n in enumerate(nodes) if n.output[0] == "b0_kT")
    del g.node[:]
    g.node.extend(nodes[:at] + extra + nodes[at:])
    onnx.checker.check_model(model, full_check=True)
    (block,) = find_attention_blocks(model)
    assert block.prunable, block.skip_reason


def test_per_head_constant_is_sliced() -> None:
    """A [1, H, N, N] bias added to the scores (Swin's relative position bias) is cut with the heads."""
    model = mha_model(heads=4, tokens=5)
    bias = np.random.default_rng(3).standard_normal((1, 4, 5, 5)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(bias, "relbias"))
    for n in model.graph.node:
        if n.op_type == "Softmax":
            n.input[0] = "s_biased"
    at = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Softmax")
    model.graph.node.insert(at, helper.make_node("Add", ["b0_s", "relbias"], ["s_biased"]))
    (block,) = find_attention_blocks(model)
    assert block.prunable and block.group is not None
    assert block.group.slices["relbias"].axis == 1


def test_mlp_found_for_gelu_as_erf_and_not_for_attention() -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "fc1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "fc2"),
        numpy_helper.from_array(np.array(2**0.5, dtype=np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["hd"]),
        helper.make_node("Erf", ["hd"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "fc2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (mlp,) = find_mlps(model)
    assert mlp.prunable and mlp.hidden == 32 and mlp.params_per_neuron == 8 + 1 + 8
    assert mlp.flops_per_neuron == 2 * 2 * 8 * 2  # fc1 column + fc2 row, batch 2
    assert find_mlps(mha_model()) == []  # qkv and proj are not MLPs


def test_graph_view_evaluates_runtime_shapes() -> None:
    model = mha_model(dynamic_batch=False)
    view = GraphView(model)
    assert view.shape("b0_qkvT") == [3, 2, 4, 5, 4]
    assert view.value("b0_shape5").tolist() == [2, 5, 3, 4, 4]
    dyn = GraphView(mha_model(dynamic_batch=True))
    assert dyn.value("b0_shape5") is None  # a symbolic batch cannot be folded


def test_graph_view_resolves_constants_through_aliases() -> None:
    """One constants table for every analysis: Identity aliases of an initializer, scalar and list Constant nodes,
    and how many nodes read each constant (the channel analysis refuses to cut a weight read twice)."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alias"]),
        helper.make_node("Constant", [], ["shape"], value_ints=[3, 2]),
        helper.make_node("Constant", [], ["eps"], value_float=1e-5),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("MatMul", ["x", "w_alias"], ["z"]),
        helper.make_node("Add", ["y", "z"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["r"]),
        helper.make_node("Add", ["r", "eps"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 1])],
        [w],
    )
    view = GraphView(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert view.constant_base("w_alias") == "w" and view.constant_base("y") is None
    assert np.array_equal(view.constant("w_alias"), numpy_helper.to_array(w))
    assert view.constant_shape("w_alias") == (2, 3)
    assert view.constant("shape").tolist() == [3, 2] and view.constant("shape").dtype == np.int64
    assert view.constant("eps").dtype == np.float32 and view.is_constant("eps")
    assert view.constant_readers == {"w": 2, "shape": 1, "eps": 1}


def test_selection_helpers() -> None:
    assert select_top(np.array([1.0, 3.0, 3.0, 2.0]), 2) == [1, 2]
    assert select_top(np.array([5.0, 5.0, 5.0]), 1) == [0]  # ties to the lower index
    assert [keep_count(4, r) for r in (0.0, 0.25, 0.5, 0.74, 0.99)] == [4, 3, 2, 2, 1]


def test_finalize_keeps_weights_and_checks() -> None:
    """finalize sets large weights aside during its checks: they come back bit-identical."""
    model = mha_model(dim=128, heads=4, tokens=3)  # wqkv 128x384 > the set-aside limit
    out = finalize(model)
    a = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert [i.name for i in out.graph.input] == ["x"]
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)
    assert np.array_equal(run_ort(out, x), run_ort(model, x))


def _qkv_variant_model(split: bool, heads: int = 4, dim: int = 16, tokens: int = 5) -> onnx.ModelProto:
    """Separate q/k/v projections (``split=False``) or one qkv projection cut by ``Split`` on the channel axis."""
    rng = np.random.default_rng(7)
    hd = dim // heads
    inits = [
        numpy_helper.from_array(np.array([1, tokens, heads, hd], dtype=np.int64), "s4"),
        numpy_helper.from_array(np.array([1, tokens, dim], dtype=np.int64), "s3"),
        numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32) * 0.3, "wo"),
    ]
    nodes = []
    if split:
        inits.append(numpy_helper.from_array(rng.standard_normal((dim, 3 * dim)).astype(np.float32) * 0.3, "wqkv"))
        inits.append(numpy_helper.from_array(np.array([dim] * 3, dtype=np.int64), "sizes"))
        nodes += [
            helper.make_node("MatMul", ["x", "wqkv"], ["qkv"]),
            helper.make_node("Split", ["qkv", "sizes"], ["q0", "k0", "v0"], axis=-1),
        ]
    else:
        for n in "qkv":
            inits.append(numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32) * 0.3, f"w{n}"))
            inits.append(numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32) * 0.1, f"b{n}"))
            nodes += [
                helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}m"]),
                helper.make_node("Add", [f"{n}m", f"b{n}"], [f"{n}0"]),
            ]
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("Reshape", [f"{n}0", "s4"], [f"{n}4"]),  # [1, N, H, hd]
            helper.make_node("Transpose", [f"{n}4"], [f"{n}t"], perm=perm),  # q, v: [1, H, N, hd]; k: [1, H, hd, N]
        ]
    nodes += [
        helper.make_node("MatMul", ["qt", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "vt"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "s3"], ["o3"]),
        helper.make_node("MatMul", ["o3", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qkv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("split", [False, True])
def test_separate_and_split_qkv_equal_the_oracle(split: bool) -> None:
    from passes.prune_heads import PruneHeadsConfig, prune_heads, zero_heads

    model = _qkv_variant_model(split)
    (block,) = find_attention_blocks(model)
    assert block.prunable, block.skip_reason
    assert len(block.group.sources) == (1 if split else 3) and block.group.sinks == ["wo"]
    assert bool(block.group.split_edits) == split
    pruned, _ = prune_heads(model, PruneHeadsConfig(keep_sets={block.id: [1, 2]}))
    x = np.random.default_rng(2).standard_normal((1, 5, 16)).astype(np.float32)
    ref = run_ort(zero_heads(model, block, [0, 3]), x)
    assert np.abs(run_ort(pruned, x) - ref).max() <= 1e-5
    if split:
        sizes = next(n for n in pruned.graph.node if n.op_type == "Split").input[1]
        assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == sizes)).tolist() == [8, 8, 8]


def test_gemm_with_transposed_weights_mlp() -> None:
    """fc1 as Gemm(transB=1) with a [hidden, in] weight, fc2 as Gemm(transB=0): rows and columns both follow."""
    from passes.slice_neurons import SliceNeuronsConfig, slice_neurons, zero_neurons

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((12, 6)).astype(np.float32), "w1"),  # [hidden, in]
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((12, 6)).astype(np.float32), "w2"),  # [hidden, out]
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (mlp,) = find_mlps(model)
    assert mlp.group.slices["w1"].axis == 0 and mlp.group.slices["w2"].axis == 0
    keep = [0, 3, 4, 9, 11]
    pruned, report = slice_neurons(model, SliceNeuronsConfig(keep_sets={mlp.id: keep}))
    assert report.params_before - report.params_after == 7 * (6 + 1 + 6)
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    ref = run_ort(zero_neurons(model, mlp, [i for i in range(12) if i not in keep]), x)
    assert np.abs(run_ort(pruned, x) - ref).max() <= 1e-5


def test_positions_and_sizes_of_unequal_parts() -> None:
    # LeViT's fused projection: 2 heads x [q(2) | k(2) | v(4)]; the q/k channels are one unit axis of 2 units
    qk = ((2, False), (8, Parts((((2, True),), ((2, True),), 4))))
    v = ((2, False), (8, Parts((2, 2, ((4, True),)))))
    assert unit_count(qk) == 2 and unit_copies(qk) == 2 and unit_count(v) == 4 and unit_copies(v) == 1
    assert layout_size(qk) == 16 and layout_size(qk, 1) == 12 and layout_size(v, 1) == 10
    assert unit_share(qk) == 0.5 and unit_share(v) == 0.5
    # keeping q/k channel 1: the v runs stay whole; zeroing channel 0 touches q and k only
    assert kept_positions(qk, [1]).tolist() == [1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]
    assert unit_positions(qk, [0]).tolist() == [0, 2, 8, 10]
    assert kept_positions(v, [0, 3]).tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15]
    # a reshape may move the parts as a whole, never split them
    assert map_reshape([3, 16], 1, qk, [3, 2, 8]) == Dim(2, ((8, Parts((((2, True),), ((2, True),), 4))),))
    with pytest.raises(TraceError, match="splits the unit axis"):
        map_reshape([3, 16], 1, qk, [3, 4, 4])


def test_tile_passes_the_unit_axis_only_when_it_is_not_repeated() -> None:
    # y = x @ w1 (16 hidden units) -> Tile -> @ w2: repeating the batch axis carries the units; repeating them not
    def model(repeats: list[int]) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        inits = [
            numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((16 * repeats[2], 8)).astype(np.float32), "w2"),
            numpy_helper.from_array(np.array(repeats, dtype=np.int64), "repeats"),
        ]
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["y"]),
            helper.make_node("Tile", ["y", "repeats"], ["t"]),
            helper.make_node("MatMul", ["t", "w2"], ["z"]),
        ]
        graph = helper.make_graph(
            nodes,
            "tile",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    group = trace(GraphView(model([2, 1, 1])), "y", Dim(2, ((16, True),)))
    assert group.sources == ["w1"] and group.sinks == ["w2"] and group.dims["t"] == Dim(2, ((16, True),))
    with pytest.raises(TraceError, match="tiles the unit axis"):
        trace(GraphView(model([1, 1, 2])), "y", Dim(2, ((16, True),)))


def test_fused_qkv_is_taken_apart_and_its_q_k_and_v_channels_are_two_groups() -> None:
    """The canonical form turns ``Reshape [B, N, 3, H, d] -> Transpose -> Split -> Squeeze x3`` into a Split of the
    projection's own axis (same function, one MatMul, idempotent); the trace of q's channels restarts when it
    reaches k through the scores, so q/k form one group and v another, each exact against zeroing."""
    from passes._core.canonical import canonicalize
    from passes._core.oracle import zero_units
    from passes._core.prune import UnitPruneConfig, prune_units
    from passes._core.units import find_head_dims

    model = mha_model(blocks=2)
    canon = canonicalize(model)
    assert canonicalize(canon).SerializeToString() == canon.SerializeToString()
    ops = [n.op_type for n in canon.graph.node]
    assert "Squeeze" not in ops and ops.count("MatMul") == len([n for n in model.graph.node if n.op_type == "MatMul"])
    view = GraphView(canon)
    splits = [n for n in canon.graph.node if n.op_type == "Split"]
    assert len(splits) == 2 and all(view.rank(n.input[0]) - 1 == view.attrs(n)["axis"] for n in splits)
    x = np.random.default_rng(4).standard_normal((2, 5, 16)).astype(np.float32)
    assert np.abs(run_ort(canon, x) - run_ort(model, x)).max() <= 1e-6
    units = find_head_dims(model)
    ids = sorted(u.id for u in units)
    blocks = sorted(b.id for b in find_attention_blocks(model))
    assert ids == sorted(blocks + [b + "#qk" for b in blocks]) and all(u.count == 4 for u in units)
    keep = {u.id: [0, 3] if u.id.endswith("#qk") else [1, 2, 3] for u in units}
    pruned, report = prune_units(model, "head_dim", UnitPruneConfig(keep_sets=keep), "head_dim")
    assert report.modified
    zeroed = model
    for u in units:
        zeroed = zero_units(zeroed, u, [i for i in range(4) if i not in keep[u.id]])
    assert np.abs(run_ort(pruned, x) - run_ort(zeroed, x)).max() <= 1e-5
    sizes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert sizes["b0_wqkv"] == [16, 2 * 4 * 2 + 4 * 3] and sizes["b0_wproj"] == [4 * 3, 16]


def test_a_run_time_shape_vector_read_by_two_blocks_gets_a_copy_each() -> None:
    """dynamo builds ``[batch, tokens, heads, head_dim]`` once for blocks of equal sizes; the canonical form gives
    each reader its own Concat (a cut of one block's heads must not rewrite the other's), and computes the same."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[B, 5, 8] x) => (float[B, 5, 4, 4] y) <float[8, 8] w1, float[8, 8] w2> {
            s = Shape(x)
            i0 = Constant<value = int64[1] {0}>()
            b = Gather(s, i0)
            rest = Constant<value = int64[3] {5, 2, 4}>()
            target = Concat<axis = 0>(b, rest)
            h1 = MatMul(x, w1)
            h2 = MatMul(x, w2)
            y1 = Reshape(h1, target)
            y2 = Reshape(h2, target)
            y = Concat<axis = 2>(y1, y2)
        }
        """
    )
    rng = np.random.default_rng(0)
    for name in ("w1", "w2"):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name))
    out = canonicalize(model)
    reshapes = [n for n in out.graph.node if n.op_type == "Reshape"]
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    assert len({n.input[1] for n in reshapes}) == 2 and all(producers[n.input[1]] == "Concat" for n in reshapes)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    assert np.array_equal(run_ort(out, x), run_ort(model, x))
