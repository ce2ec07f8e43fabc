"""The rewrite rules of passes.optimize (passes._core.rewrite), each on small graphs written in ONNX text: the pattern
it finds, the checks that refuse a candidate (with the reason), and the rewrite, held to onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from fileformat.session import SessionConfig, load_session
from passes._core.layernorm import LayerNormFusion, find_layernorm_chains
from passes._core.layout import LayoutChainRule, plan_layout_chain

_GAMMA = ", ".join(f"{0.5 + 0.1 * i:.1f}" for i in range(8))
_BETA = ", ".join(f"{0.05 * i - 0.2:.2f}" for i in range(8))


def _model(body: str, signature: str, inits: str = "", opset: int = 13) -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g {signature}
    {f"<{inits}>" if inits else ""}
    {{
    {body}
    }}
    """
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = load_session(model, SessionConfig(optimization="disable"))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


LN_INITS = f"float[8] gamma = {{{_GAMMA}}}, float[8] beta = {{{_BETA}}}, float eps = {{1e-5}}, float two = {{2.0}}"
LN_BODY = """
    m = ReduceMean <axes = [-1]> (x)
    d = Sub (x, m)
    sq = Pow (d, two)
    v = ReduceMean <axes = [-1]> (sq)
    ve = Add (v, eps)
    s = Sqrt (ve)
    n = Div (d, s)
    gm = Mul (n, gamma)
    y = Add (gm, beta)
"""


def _layernorm(body: str = LN_BODY, out: str = "y") -> onnx.ModelProto:
    return _model(body, f"(float[2,4,8] x) => (float[2,4,8] {out})", LN_INITS)


# ------------------------------------------------------------------------------------------------ LayerNorm


def test_layernorm_pattern_finds_the_chain_with_its_affine_tail() -> None:
    model = _layernorm()
    chains = find_layernorm_chains(model)
    assert len(chains) == 1 and len(chains[0]) == 9


def test_layernorm_pattern_takes_reciprocal_times_for_the_division() -> None:
    body = LN_BODY.replace("n = Div (d, s)", "r = Reciprocal (s)\n    n = Mul (d, r)")
    assert [len(c) for c in find_layernorm_chains(_layernorm(body))] == [10]


def test_layernorm_fusion_is_one_node_with_the_same_outputs() -> None:
    model = _layernorm()
    result = LayerNormFusion().apply(model)
    assert result.count == 1 and not result.skipped
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["LayerNormalization"]
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 17
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), atol=1e-5)
    assert len(model.graph.node) == 9  # the input is never changed


def test_layernorm_check_refuses_an_intermediate_read_elsewhere() -> None:
    body = LN_BODY + "    z = Identity (d)\n"
    model = _model(body, "(float[2,4,8] x) => (float[2,4,8] y, float[2,4,8] z)", LN_INITS)
    result = LayerNormFusion().apply(model)
    assert result.count == 0
    assert result.skipped and "also read outside the chain" in result.skipped[0][1]


def test_layernorm_check_refuses_a_reduction_over_other_axes() -> None:
    body = LN_BODY.replace("<axes = [-1]>", "<axes = [1]>")
    result = LayerNormFusion().apply(_layernorm(body))
    assert result.count == 0 and "same trailing axes" in result.skipped[0][1]


def test_layernorm_check_refuses_an_epsilon_that_is_not_a_scalar() -> None:
    inits = LN_INITS.replace("float eps = {1e-5}", "float[2] eps = {1e-5, 1e-5}")
    model = _model(
        LN_BODY.replace("ve = Add (v, eps)", "ve = Add (v, eps)"), "(float[2,4,8] x) => (float[2,4,2] y)", inits
    )
    result = LayerNormFusion().apply(model)
    assert result.count == 0 and "not a scalar constant" in result.skipped[0][1]


# ------------------------------------------------------------------------------------------------ layout chains


UNFOLD = """
    s1 = Constant <value = int64[4] {6, 2, 4, 2}> ()
    a = Reshape (x, s1)
    b = Transpose <perm = [0, 2, 1, 3]> (a)
    s2 = Constant <value = int64[3] {6, 4, 4}> ()
    c = Reshape (b, s2)
    d = Transpose <perm = [0, 2, 1]> (c)
    s3 = Constant <value = int64[3] {6, 4, 4}> ()
    y = Reshape (d, s3)
"""


def test_layout_plan_of_known_chains() -> None:
    assert plan_layout_chain([2, 3], [("Transpose", [1, 0]), ("Transpose", [1, 0])]) == []
    assert plan_layout_chain([2, 3, 4], [("Reshape", [6, 4])]) == [("Reshape", [6, 4])]
    assert plan_layout_chain([2, 3], [("Reshape", [3, 2]), ("Reshape", [5])]) is None  # not a factorisation


def test_layout_rule_collapses_a_chain_and_keeps_its_output() -> None:
    model = _model(UNFOLD, "(float[6,8,2] x) => (float[6,4,4] y)")
    result = LayoutChainRule().apply(model)
    assert result.count == 1
    assert len(result.model.graph.node) < 5 + 3  # the Constants become initializers in finalize; fewer layout ops
    layout = [n.op_type for n in result.model.graph.node if n.op_type != "Constant"]
    assert len(layout) <= 3
    x = np.arange(96, dtype=np.float32).reshape(6, 8, 2)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))


def test_layout_rule_removes_an_identity_chain_inside_the_graph() -> None:
    body = """
    a = Transpose <perm = [1, 0]> (x)
    b = Transpose <perm = [1, 0]> (a)
    y = Relu (b)
    """
    model = _model(body, "(float[2,3] x) => (float[2,3] y)")
    result = LayoutChainRule().apply(model)
    assert result.count == 1 and [n.op_type for n in result.model.graph.node] == ["Relu"]
    assert result.model.graph.node[0].input[0] == "x"


def test_layout_rule_keeps_an_identity_chain_that_ends_at_an_output() -> None:
    body = """
    a = Transpose <perm = [1, 0]> (x)
    y = Transpose <perm = [1, 0]> (a)
    """
    result = LayoutChainRule().apply(_model(body, "(float[2,3] x) => (float[2,3] y)"))
    assert result.count == 0 and "graph output" in result.skipped[0][1]


def test_layout_rule_does_not_chain_through_a_tensor_read_twice() -> None:
    body = """
    a = Transpose <perm = [1, 0]> (x)
    b = Transpose <perm = [1, 0]> (a)
    z = Relu (a)
    y = Relu (b)
    """
    result = LayoutChainRule().apply(_model(body, "(float[2,3] x) => (float[2,3] y, float[3,2] z)"))
    assert result.count == 0


@pytest.mark.parametrize("rule", [LayerNormFusion(), LayoutChainRule()])
def test_a_rule_with_nothing_to_do_returns_a_copy(rule: LayerNormFusion | LayoutChainRule) -> None:
    model = _model("y = Relu (x)", "(float[2,3] x) => (float[2,3] y)")
    result = rule.apply(model)
    assert result.count == 0 and result.model is not model
    assert result.model.SerializeToString() == model.SerializeToString()
