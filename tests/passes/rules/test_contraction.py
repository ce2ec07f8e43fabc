"""Contraction rules (passes/_core/dims/rules/contraction.py): MatMul, Gemm, Conv make, pass or end the unit."""

from __future__ import annotations

from _helpers_rules import HIDDEN, check_cut, initializer, parse, refusal, trace_from

from passes._core.dims import Dim

OPS = ["Conv", "Gemm", "MatMul"]

_ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6] X, float[6,8] Wq, float[6,8] Wk, float[6,8] Wv, float[8,5] Wo) => (float[1,4,5] Y)
  <int64[4] sq = {1, 4, 2, 4}, int64[4] sk = {1, 4, 2, 4}, int64[4] sv = {1, 4, 2, 4}, int64[3] so = {1, 4, 8}> {
    Q = MatMul(X, Wq)
    K = MatMul(X, Wk)
    V = MatMul(X, Wv)
    Q4 = Reshape(Q, sq)
    K4 = Reshape(K, sk)
    V4 = Reshape(V, sv)
    Qh = Transpose<perm = [0, 2, 1, 3]>(Q4)
    Kt = Transpose<perm = [0, 2, 3, 1]>(K4)
    Vh = Transpose<perm = [0, 2, 1, 3]>(V4)
    S = MatMul(Qh, Kt)
    P = Softmax<axis = -1>(S)
    O = MatMul(P, Vh)
    Ot = Transpose<perm = [0, 2, 1, 3]>(O)
    C = Reshape(Ot, so)
    Y = MatMul(C, Wo)
}
"""


def test_matmul_heads_through_attention() -> None:
    """The head axis (axis 1 of the scores) is a batch axis of both products; it comes from the projections'
    columns (2 heads x 4 channels) and ends in the output projection's rows."""
    model = parse(_ATTENTION)
    group = trace_from(model, "S", Dim(1, ((2, True),)))
    heads = ((2, True), (4, False))
    assert {t: group.dims[t] for t in ("Q", "Kt", "Vh", "C")} == {
        "Q": Dim(2, heads),
        "Kt": Dim(1, ((2, True),)),
        "Vh": Dim(1, ((2, True),)),
        "C": Dim(2, heads),
    }
    assert sorted(group.sources) == ["Wk", "Wq", "Wv"] and group.sinks == ["Wo"]
    pruned = check_cut(model, group, [1], kind="heads")
    assert initializer(pruned, "Wo").shape == (4, 5)


def test_matmul_refuses_a_vector_operand_and_a_square() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,6] X, float[6,8] W1, float[8] v) => (float[1,8] Y) {
        H = MatMul(X, W1)
        Y = MatMul(H, v)
    }
    """
    assert "MatMul with a vector operand" in refusal(parse(text), "H", Dim(2, ((8, True),)))
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,6] X, float[6,8] W1) => (float[1,8,8] Y) {
        H = MatMul(X, W1)
        Y = MatMul(H, H)
    }
    """
    assert "MatMul of a tensor with itself" in refusal(parse(text), "H", Dim(2, ((8, True),)))


_GEMMS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,6] X, float[6,8] W0, float[8,6] W1, float[8,6] W1b, float[8] b1, float[8,5] W2, float[5] b2)
  => (float[4,5] Y) {
    H0 = MatMul(X, W0)
    H = Gemm<transB = 1>(X, W1, H0)
    G = Gemm<transB = 1>(X, W1b, b1)
    S = Add(H, G)
    A = Relu(S)
    T = Transpose(A)
    Y = Gemm<transA = 1>(T, W2, b2)
}
"""


def test_gemm_with_transposed_operands_and_biases() -> None:
    """transB: the unit is W's axis 0 and its bias's; transA: the contracted axis of A^T is its axis 0. A computed
    bias (H0) carries Y's unit too."""
    model = parse(_GEMMS)
    group = trace_from(model, "H0", Dim(1, ((8, True),)))
    assert group.dims["H"] == group.dims["G"] == Dim(1, ((8, True),)) and group.dims["T"] == Dim(0, ((8, True),))
    assert {t: s.axis for t, s in group.slices.items()} == {"W0": 1, "W1": 0, "W1b": 0, "b1": 0, "W2": 0}
    assert sorted(group.sources) == ["W0", "W1", "W1b"] and group.sinks == ["W2"]
    check_cut(model, group, [0, 1, 5])


_CONVS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] X, float[8,3,3,3] W1, float[8] B1, float[8,1,3,3] Wd, float[8] Bd, float[5,8,1,1] W2)
  => (float[1,5,8,8] Y) {
    H = Conv<pads = [1, 1, 1, 1]>(X, W1, B1)
    D = Conv<group = 8, pads = [1, 1, 1, 1]>(H, Wd, Bd)
    A = Relu(D)
    Y = Conv(A, W2)
}
"""


def test_conv_channels_through_a_depthwise_conv() -> None:
    """A group-1 conv makes the channels (W's axis 0 and the bias), a depthwise conv passes them (its ``group``
    follows the kept count), the next group-1 conv consumes them (W's axis 1)."""
    model = parse(_CONVS)
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert {t: s.axis for t, s in group.slices.items()} == {"W1": 0, "B1": 0, "Wd": 0, "Bd": 0, "W2": 1}
    assert group.sources == ["W1"] and group.sinks == ["W2"] and len(group.group_edits) == 1
    pruned = check_cut(model, group, [0, 2, 5], kind="channels")
    depthwise = next(n for n in pruned.graph.node if n.input[1] == "Wd")
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 3


def test_conv_refusals() -> None:
    grouped = _CONVS.replace("float[8,1,3,3] Wd", "float[8,2,3,3] Wd").replace("group = 8", "group = 4")
    assert "a grouped Conv (group 4) that is not depthwise" in refusal(parse(grouped), "H", Dim(1, ((8, True),)))
    # the unit on a spatial axis (the rows of H)
    assert "a spatial or batch axis of a Conv" in refusal(parse(_CONVS), "A", Dim(2, ((8, True),)), channels=True)


def test_matmul_sandwich_from_both_ends() -> None:
    """The sandwich's MatMuls: the unit is W1's columns (a source) and W2's rows (a sink), from H or from A."""
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,6] X, float[6,8] W1, float[8,5] W2) => (float[1,4,5] Y) {
            H = MatMul(X, W1)
            A = Relu(H)
            Y = MatMul(A, W2)
        }
        """
    )
    assert trace_from(model, *HIDDEN).slices == trace_from(model, "A", Dim(2, ((8, True),))).slices
