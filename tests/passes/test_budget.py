"""passes._core.budget: LAMP scores, the cost model, LAMP / uniform allocation, and budgets on a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from passes._core.budget import BudgetConfig, CostModel, Layer, Term, allocate, lamp_scores
from passes._core.stats import graph_stats
from passes.slice_channels import SliceChannelsConfig, slice_channels


def test_lamp_scores_hand_computed() -> None:
    # magnitudes 3, 1, 2 -> sorted 1, 2, 3 (squares 1, 4, 9): 1/14, 4/13, 9/9
    got = lamp_scores(np.array([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(got, [1.0, 1 / 14, 4 / 13])
    # sign does not matter (u^2); ties keep index order: 1/(1+1+4), 1/(1+4), 4/4
    np.testing.assert_allclose(lamp_scores(np.array([-1.0, 1.0, 2.0])), [1 / 6, 1 / 5, 1.0])
    assert np.all(lamp_scores(np.zeros(3)) == 0)


def test_cost_model_products_and_incremental_removal() -> None:
    # conv A -> conv B: B's cost scales with A's kept outputs times B's kept outputs; a concat factor mixes A and a
    # fixed segment of 4 channels.
    terms = [
        Term(100.0, ((("A", 8),),)),
        Term(60.0, ((("B", 6),), (("A", 8),))),
        Term(40.0, (((None, 4), ("A", 8)),)),
        Term(10.0),
    ]
    model = CostModel(terms, {"A": 8, "B": 6})
    assert model.full == pytest.approx(210.0)
    want = 100 * 4 / 8 + 60 * (3 / 6) * (4 / 8) + 40 * (4 + 4) / 12 + 10
    assert model.evaluate({"A": 4, "B": 3}) == pytest.approx(want)
    model.reset()
    for _ in range(4):
        model.remove("A")
    for _ in range(3):
        model.remove("B")
    assert model.current == pytest.approx(want)


def _two_layers() -> tuple[list[Layer], CostModel, CostModel]:
    layers = [Layer("A", np.array([1.0, 1.0, 1.0, 10.0])), Layer("B", np.array([5.0, 5.0, 5.0, 5.0]))]
    flops = CostModel([Term(100.0, ((("A", 4),),)), Term(100.0, ((("B", 4),),))], {"A": 4, "B": 4})
    params = CostModel([Term(8.0, ((("A", 4),),)), Term(8.0, ((("B", 4),),))], {"A": 4, "B": 4})
    return layers, flops, params


def test_lamp_allocation_prefers_the_small_weights_of_one_layer() -> None:
    layers, flops, params = _two_layers()
    # LAMP: A's small units score 1/103, 1/102, 1/101; B's first unit 25/100 -> A loses two units first
    alloc = allocate(layers, flops, params, BudgetConfig(target=0.75, method="lamp", floor=0.0))
    assert alloc.reached and alloc.keep == {"A": [2, 3], "B": [0, 1, 2, 3]}
    assert alloc.flops == pytest.approx(0.75)
    uni = allocate(layers, flops, params, BudgetConfig(target=0.75, method="uniform", floor=0.0))
    assert uni.counts == {"A": 3, "B": 3} and uni.keep["A"] == [0, 1, 3]
    by_params = allocate(layers, flops, params, BudgetConfig(target=0.5, metric="params", floor=0.0))
    assert by_params.params == pytest.approx(0.5) and by_params.counts == {"A": 1, "B": 3}


def test_floors_stop_the_budget_and_are_named() -> None:
    layers, flops, params = _two_layers()
    for method in ("lamp", "uniform"):
        alloc = allocate(layers, flops, params, BudgetConfig(target=0.1, method=method, floor=0.5))
        assert not alloc.reached
        assert alloc.counts == {"A": 2, "B": 2} and sorted(alloc.at_floor) == ["A", "B"]
        assert alloc.flops == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_budget_config_rejects_bad_targets(bad: float) -> None:
    with pytest.raises(ValueError, match="target"):
        BudgetConfig(target=bad).validate()


@pytest.mark.parametrize("allocation", ["lamp", "uniform"])
def test_flops_targets_hit_within_five_percent(exported, allocation: str) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    before = graph_stats(model).flops
    for target in (0.5, 0.25, 0.1):
        out, report = slice_channels(model, SliceChannelsConfig(target_flops=target, allocation=allocation))
        achieved = graph_stats(out).flops / before  # independent count of the written model
        budget = report.extra["budget"]
        assert budget["achieved"] == pytest.approx(achieved)
        if budget["reached"]:
            assert abs(achieved - target) <= 0.05 * target, (allocation, target, achieved)
        else:  # the report must say which floors stopped it
            assert budget["at_floor"] and any("floor" in n for n in report.notes)
        floors = [r for r in report.rows if isinstance(r["kept"], int) and r["kept"] < 1]
        assert not floors


def test_params_target_and_decoder_scope(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    stats = graph_stats(model)
    out, report = slice_channels(model, SliceChannelsConfig(target_params=0.6))
    assert abs(graph_stats(out).params / stats.params - 0.6) <= 0.03
    out_d, report_d = slice_channels(model, SliceChannelsConfig(target_flops=0.5, scope="decoder"))
    assert {r["scope"] for r in report_d.rows} == {"decoder"}
    assert abs(graph_stats(out_d).flops / stats.flops - 0.5) <= 0.025 or not report_d.extra["budget"]["reached"]


def test_target_one_keeps_everything(exported, tmp_path: Path) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    out, report = slice_channels(model, SliceChannelsConfig(target_flops=1.0))
    assert not report.modified and out.SerializeToString() == model.SerializeToString()


def test_lamp_passes_over_a_unit_that_would_overshoot() -> None:
    # big's first unit has the lowest LAMP score but is worth 25% of the cost; the target 0.9 is reached within 1%
    # by two of small's units (5% each) instead; with small at its floor, the big unit goes after all.
    layers = [Layer("big", np.array([0.001, 10.0])), Layer("small", np.arange(1.0, 11.0))]
    terms = [Term(100.0, ((("big", 2),),)), Term(100.0, ((("small", 10),),))]
    sizes = {"big": 2, "small": 10}
    flops, params = CostModel(terms, sizes), CostModel(terms, sizes)
    alloc = allocate(layers, flops, params, BudgetConfig(target=0.9, floor=0.0))
    assert alloc.keep == {"big": [0, 1], "small": list(range(2, 10))}
    assert alloc.flops == pytest.approx(0.9)
    layers[1].floor = 10  # small may not lose anything
    stuck = allocate(layers, flops, params, BudgetConfig(target=0.9, floor=0.0))
    assert stuck.reached and stuck.keep["big"] == [1] and stuck.flops == pytest.approx(0.75)


@pytest.mark.parametrize("method", ["lamp", "halp", "uniform"])
def test_stepped_layers_keep_multiples_of_their_step(method: str) -> None:
    rng = np.random.default_rng(3)
    layers = [Layer("a", rng.random(32), step=8), Layer("b", rng.random(24), step=8), Layer("c", rng.random(5))]
    sizes = {ly.name: ly.size for ly in layers}
    terms = [Term(10.0, ((("a", 32),), (("b", 24),))), Term(4.0, ((("c", 5),),)), Term(1.0)]
    cost = CostModel(terms, sizes)
    metric = "latency" if method == "halp" else "flops"
    alloc = allocate(
        layers, cost, cost, BudgetConfig(target=0.4, metric=metric, method=method), CostModel(terms, sizes)
    )
    assert alloc.reached
    assert alloc.counts["a"] % 8 == 0 and alloc.counts["b"] % 8 == 0
    assert alloc.counts["a"] < 32 or alloc.counts["b"] < 24
    for name in ("a", "b"):
        assert len(alloc.keep[name]) == alloc.counts[name]
