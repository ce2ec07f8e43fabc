"""The rule registry (passes/_core/dims/registry.py): every registered op is tested, lookups follow opset ranges,
overlapping registrations are refused, and an op without a rule stops the trace with the reason."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
from _helpers_rules import HIDDEN, check_cut, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim, registry
from passes._core.dims.registry import lookup, register, registered_ops, registrations

FAMILIES = sorted(p.stem for p in Path(__file__).parent.glob("test_*.py") if p.stem != "test_rule_registry")


def _ops_of(family: str) -> set[str]:
    path = Path(__file__).parent / f"{family}.py"
    spec = importlib.util.spec_from_file_location(f"_rules_{family}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.OPS)


def test_every_registered_op_is_named_by_a_family_test() -> None:
    """Each family's test module lists the ops its tests parametrize over or write (``OPS``); together they name
    every op with a rule, and no op without one."""
    named = set().union(*(_ops_of(f) for f in FAMILIES))
    assert registered_ops() - named == set(), "ops with a rule and no test"
    assert named - registered_ops() == set(), "ops a test names that have no rule"


def test_every_rule_takes_the_protocol_arguments() -> None:
    for reg in registrations():
        params = list(inspect.signature(reg.rule).parameters)
        assert params == ["tr", "ref", "known", "dim"], f"{reg.op}: {params}"


def test_lookup_follows_opset_ranges() -> None:
    assert lookup("Slice", 9) is not None and lookup("Slice", 9) is not lookup("Slice", 10)
    assert lookup("Slice", 10) is lookup("Slice", 23)
    assert lookup("Relu", 1) is lookup("Relu", 22) is lookup("Relu", 17, domain="ai.onnx")
    assert lookup("TopK", 17) is None and lookup("Relu", 17, domain="com.example") is None


def test_overlapping_registrations_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})

    def rule(tr, ref, known, dim):  # noqa: ANN001, ANN202 - a stand-in
        return {}

    register("Foo", version=(1, 12))(rule)
    register("Foo", version=(13, None))(rule)
    with pytest.raises(ValueError, match="overlaps"):
        register("Foo", version=11)(rule)
    with pytest.raises(ValueError, match="overlaps"):
        register("Foo")(rule)
    assert registered_ops() == {"Foo"}


def test_a_new_rule_is_one_registered_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """An op without a rule stops the trace; registering one (here CumSum along another axis than the unit's, a
    running sum over the tokens) lets the walk through, and the cut holds to the oracle."""
    model = parse(sandwich("A = CumSum(H, ax)", inits="int64 ax = {1}"))
    assert "no rule for CumSum on the unit axis; the unit is left whole" in refusal(model, *HIDDEN)
    monkeypatch.setattr(registry, "_REGISTRY", {k: list(v) for k, v in registry._REGISTRY.items()})

    @register("CumSum", version=(11, None))
    def cumsum(tr, ref, known, dim):  # noqa: ANN001, ANN202 - a test's rule
        axis = int(tr.view.value(ref.node.input[1]))
        if axis % len(tr.shape(ref, known)) == dim.axis:
            raise tr.fail(ref, "sums along the unit axis")
        return {ref.node.input[0]: dim, ref.node.input[1]: None, ref.node.output[0]: dim}

    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),))
    check_cut(model, group, [0, 6])


def test_a_custom_domain_op_stops_the_trace() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[1,4,6] X, float[6,8] W1, float[8,5] W2) => (float[1,4,5] Y) {
        H = MatMul(X, W1)
        A = com.example.Gate(H)
        Y = MatMul(A, W2)
    }
    """
    assert "no rule for custom-domain op com.example.Gate" in refusal(parse(text), *HIDDEN)
