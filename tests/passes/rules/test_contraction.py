"""Contraction rules (passes/_core/dims/rules/contraction.py): MatMul, Gemm, Einsum, Conv and ConvTranspose make, pass
or end the unit; grouped convolutions are cut by whole groups."""

from __future__ import annotations

from _helpers_rules import HIDDEN, check_cut, initializer, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim

OPS = ["Conv", "ConvTranspose", "Einsum", "Gemm", "MatMul"]

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
    why = refusal(parse(grouped), "H", Dim(1, ((8, True),)))
    assert "a grouped Conv (group 4) that is not depthwise, whose groups the unit does not follow" in why
    assert "each group's 2 input and 2 output channels would be cut inside it" in why
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


def test_a_channel_multiplier_conv_cuts_whole_groups() -> None:
    """A grouped conv with one input channel per group and two outputs (PiT's and FastViT's downsampling): input
    channel ``c`` becomes outputs ``2c, 2c + 1``, so the output's layout is ``channels x (2, carried)`` and
    ``group`` follows the kept count."""
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] X, float[8,3,1,1] W1, float[16,1,3,3] Wm, float[16] Bm, float[5,16,1,1] W2)
          => (float[1,5,8,8] Y) {
            H = Conv(X, W1)
            M = Conv<group = 8, pads = [1, 1, 1, 1]>(H, Wm, Bm)
            A = Relu(M)
            Y = Conv(A, W2)
        }
        """
    )
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    pairs = ((8, True), (2, False))
    assert group.dims["M"] == Dim(1, pairs) and group.slices["Wm"].layout == pairs and group.slices["W2"].axis == 1
    assert group.sources == ["W1"] and group.sinks == ["W2"]
    pruned = check_cut(model, group, [0, 3, 4], kind="channels")
    multiplier = next(n for n in pruned.graph.node if n.input[1] == "Wm")
    assert next(a.i for a in multiplier.attribute if a.name == "group") == 3
    assert initializer(pruned, "Wm").shape == (6, 1, 3, 3) and initializer(pruned, "W2").shape == (5, 6, 1, 1)


def test_a_grouped_conv_passes_a_unit_of_whole_groups() -> None:
    """4 groups of 2 input and 2 output channels: a unit laid out as ``groups x (2, carried)`` passes, each kept
    group whole (the weight's axis 1, the channels inside one group, is untouched)."""
    grouped = _CONVS.replace("float[8,1,3,3] Wd", "float[8,2,3,3] Wd").replace("group = 8", "group = 4")
    model = parse(grouped)
    pairs = ((4, True), (2, False))
    group = trace_from(model, "H", Dim(1, pairs), channels=True)
    assert group.dims["D"] == Dim(1, pairs) and group.slices["Wd"] == type(group.slices["Wd"])("Wd", 0, pairs)
    pruned = check_cut(model, group, [1, 2], kind="channels")
    assert initializer(pruned, "Wd").shape == (4, 2, 3, 3)


_TRANSPOSED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] X, float[8,3,1,1] W1, float[8,{per},2,2] Wt, float[{out}] Bt, float[5,{out},1,1] W2)
  => (float[1,5,8,8] Y) {{
    H = Conv(X, W1)
    U = ConvTranspose<kernel_shape = [2, 2], strides = [2, 2]{group}>(H, Wt, Bt)
    A = Relu(U)
    Y = Conv(A, W2)
}}
"""


def test_conv_transpose_makes_and_ends_the_channels() -> None:
    """A group-1 ConvTranspose's weight is ``[C_in, C_out, k...]``: the input channels end at its axis 0 (a sink),
    the output channels come from its axis 1 and the bias (a source)."""
    model = parse(_TRANSPOSED.format(per=4, out=4, group=""))
    ended = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert ended.slices["Wt"].axis == 0 and ended.sinks == ["Wt"] and "U" not in ended.dims
    check_cut(model, ended, [0, 1, 6], kind="channels")
    made = trace_from(model, "U", Dim(1, ((4, True),)), channels=True)
    assert {t: s.axis for t, s in made.slices.items()} == {"Wt": 1, "Bt": 0, "W2": 1}
    assert made.sources == ["Wt"] and made.sinks == ["W2"]
    check_cut(model, made, [2, 3], kind="channels")


def test_a_depthwise_conv_transpose_passes_the_channels() -> None:
    model = parse(_TRANSPOSED.format(per=1, out=8, group=", group = 8"))
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert group.dims["U"] == Dim(1, ((8, True),)) and {t: s.axis for t, s in group.slices.items()} == {
        "W1": 0,
        "Wt": 0,
        "Bt": 0,
        "W2": 1,
    }
    pruned = check_cut(model, group, [1, 5], kind="channels")
    node = next(n for n in pruned.graph.node if n.op_type == "ConvTranspose")
    assert next(a.i for a in node.attribute if a.name == "group") == 2


def test_conv_transpose_refusals() -> None:
    grouped = parse(_TRANSPOSED.format(per=2, out=8, group=", group = 4"))
    why = refusal(grouped, "H", Dim(1, ((8, True),)), channels=True)
    assert "a grouped ConvTranspose (group 4) that is not depthwise, whose groups the unit does not follow" in why
    assert "a spatial or batch axis of a ConvTranspose" in refusal(grouped, "U", Dim(2, ((8, True),)))


_EINSUM_ATTENTION = _ATTENTION.replace(
    "S = MatMul(Qh, Kt)", 'S = Einsum<equation = "b h i d, b h d j -> b h i j">(Qh, Kt)'
).replace("O = MatMul(P, Vh)", 'O = Einsum<equation = "bhij,bhjd->bhid">(P, Vh)')


def test_einsum_passes_the_heads_as_matmul_does() -> None:
    """torchvision's MaxViT writes its scores and context as Einsums: the heads' label is in every operand and the
    output, so it passes as a batch axis."""
    model = parse(_EINSUM_ATTENTION)
    group = trace_from(model, "S", Dim(1, ((2, True),)))
    assert group.dims["Kt"] == Dim(1, ((2, True),)) and group.dims["O"] == Dim(1, ((2, True),))
    assert sorted(group.sources) == ["Wk", "Wq", "Wv"] and group.sinks == ["Wo"]
    check_cut(model, group, [0], kind="heads")


def test_einsum_contracts_the_unit_with_a_weight() -> None:
    """A summed label (in two operands, not the output) ends the unit as a MatMul's contracted axis does; the
    weight is a sink. An ellipsis stands for the leading axes."""
    model = parse(
        sandwich("A = Relu(H)", y="[1,4,5]").replace("Y = MatMul(A, W2)", 'Y = Einsum<equation = "...k,kd">(A, W2)')
    )
    group = trace_from(model, *HIDDEN)
    assert group.slices["W2"].axis == 0 and group.sinks == ["W2"] and "Y" not in group.dims
    check_cut(model, group, [2, 3, 7])


def test_einsum_refusals() -> None:
    diagonal = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,6] X, float[6,8] W1) => (float[1,8] Y) {
        H = MatMul(X, W1)
        Y = Einsum<equation = "bkk->bk">(H)
    }
    """
    assert "takes a diagonal along the unit axis" in refusal(parse(diagonal), "H", Dim(2, ((8, True),)))
    summed = parse(
        sandwich('A = Einsum<equation = "bnk->bn">(H)', y="[1,4]")
        .replace("Y = MatMul(A, W2)", "Y = Relu(A)")
        .replace(", float[8,5] W2", "")
    )
    assert "sums over the unit axis (label 'k' of one operand only)" in refusal(summed, *HIDDEN)
    square = parse(diagonal.replace('"bkk->bk">(H)', '"bnk,bmk->bnm">(H, H)').replace("float[1,8] Y", "float[1,8,8] Y"))
    assert "an Einsum of a tensor with itself" in refusal(square, "H", Dim(2, ((8, True),)))
