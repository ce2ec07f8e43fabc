"""passes._core.importance and ``compress --importance sensitivity``: measured damage curves, a HALP budget that
follows them, and the CLI's contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from fileformat.errors import PassError
from fileformat.plan import read_plan
from passes._core import importance
from passes._core.budget import BudgetConfig, CostModel, Layer, Term, allocate
from passes._core.importance import damage_curve, damage_points, distortion, measure_damage, removal_points
from passes._core.oracle import zero_kept
from passes._core.stats import graph_stats
from passes._core.units import find_units
from passes.compress import CompressConfig, compress, main

from _helpers_channels import image, run  # isort: skip


def test_damage_curve_interpolates_extrapolates_and_never_decreases() -> None:
    curve = damage_curve(10, {2: 0.2, 5: 0.1, 8: 0.5})
    assert curve[0] == 0.0 and curve[1] == pytest.approx(0.1) and curve[2] == pytest.approx(0.2)
    assert curve[5] == pytest.approx(0.2)  # the measured dip to 0.1 is noise: held at 0.2
    assert np.all(np.diff(curve) >= 0)
    assert curve[10] == pytest.approx(0.5 + 2 * (0.5 - 0.1) / 3)  # the last measured slope, continued


def test_removal_points_follow_step_and_floor() -> None:
    layer = Layer("c", np.arange(64, dtype=float), step=8)
    assert removal_points(layer, floor=7) == [16, 32, 48, 56]  # kept 48, 32, 16 and the floor rounded up to 8
    assert removal_points(Layer("h", np.ones(4)), floor=1) == [1, 2, 3]
    assert removal_points(Layer("n", np.ones(3)), floor=3) == []
    assert removal_points(layer, floor=7, points=1) == [32]  # half of it kept
    assert removal_points(layer, floor=7, points=2) == [32, 56]  # and the floor


def test_damage_points_fit_about_two_minutes() -> None:
    """As many points per layer as take at most the budget on the threads given, at least one: all four on a
    model of milliseconds, one on Swin-T + UPerNet at 512 (60 layers, 4.5 s a run)."""
    assert damage_points(0.05, 70, 2) == 4
    assert damage_points(2.0, 60, 2) == 2 and damage_points(1.5, 60, 2) == 2 and damage_points(1.2, 60, 2) == 3
    assert damage_points(4.5, 60, 2) == 1 and damage_points(4.5, 60, 2, budget=600) == 4


def test_a_slow_model_is_measured_at_half_of_each_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``points=None`` (``--damage-points auto``): with no time to spare, one point per layer (half of it kept),
    the curve continued through the origin; the measured damage there is the same as with four points."""
    layers = [Layer("a", np.array([1.0, 2.0, 3.0, 4.0]))]

    def cut(ly: Layer, kept: list[int]) -> onnx.ModelProto:
        w = np.full(4, 0.25)
        w[kept] = 1.0
        return _scaled(w)

    feeds = [{"X": np.random.default_rng(0).normal(size=(1, 4, 2, 2)).astype(np.float32)}]
    full = measure_damage(_scaled(np.ones(4)), layers, {"a": 1}, cut, feeds, 1)[1]["a"]
    monkeypatch.setattr(importance, "DAMAGE_SECONDS", 0.0)
    curves, points = measure_damage(_scaled(np.ones(4)), layers, {"a": 1}, cut, feeds, 1, points=None)
    assert sorted(full) == [1, 2, 3] and points["a"] == {2: full[2]}
    assert curves["a"] == pytest.approx([0.0, full[2] / 2, full[2], 1.5 * full[2], 2 * full[2]])


def test_distortion_is_kl_of_the_class_distribution() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    assert distortion([ref], [ref]) == pytest.approx(0.0, abs=1e-12)
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    out = ref.copy()
    out[:, 0] += 1.0
    q = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    assert distortion([ref], [out]) == pytest.approx(float((p * np.log(p / q)).sum(1).mean()), rel=1e-6)


def _scaled(weights: np.ndarray, channels: int = 4) -> onnx.ModelProto:
    """``Y = X[:, :channels] * W``: a 4-class "segmentation" output whose channels the stand-in cuts below scale."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Slice", ["X", "starts", "ends", "axes"], ["S"]),
        helper.make_node("Mul", ["S", "W"], ["Y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, dtype=np.int64), n)
        for n, v in (("starts", [0]), ("ends", [channels]), ("axes", [1]))
    ] + [numpy_helper.from_array(weights[:channels].reshape(1, -1, 1, 1).astype(np.float32), "W")]
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_measured_damage_stops_at_a_refused_cut_and_is_the_same_on_any_thread_count() -> None:
    """Layer a's cuts scale the output's channels down (a real damage); the passes refuse to take it under 3
    units. Layer b's cut under 3 units changes the output's shape. Either way that removal and any larger one cost
    infinity, and nothing past it is measured, even when it was already submitted to a worker."""
    layers = [Layer("a", np.array([1.0, 2.0, 3.0, 4.0])), Layer("b", np.array([4.0, 3.0, 2.0, 1.0]))]
    built: list[tuple[str, int]] = []

    def cut(ly: Layer, kept: list[int]) -> onnx.ModelProto:
        built.append((ly.name, len(kept)))
        if ly.name == "a" and len(kept) < 3:
            raise PassError("a keeps 3 units at least")
        w = np.full(4, 0.25)
        w[kept] = 1.0
        return _scaled(w, channels=4 if len(kept) >= 3 else 3)

    feeds = [{"X": np.random.default_rng(s).normal(size=(1, 4, 2, 2)).astype(np.float32)} for s in range(2)]
    by_threads = {t: measure_damage(_scaled(np.ones(4)), layers, {"a": 1, "b": 1}, cut, feeds, t) for t in (1, 2)}
    curves, points = by_threads[2]
    for name in "ab":  # measured up to the refusal, infinite from it on
        assert sorted(points[name]) == [1, 2] and 0 < points[name][1] < np.inf == points[name][2]
        assert np.isfinite(curves[name][:2]).all() and np.isinf(curves[name][2:]).all()
    assert ("a", 1) not in built and ("b", 1) in built  # a's cuts stop at the refusal; b's 3rd was built, not read
    assert by_threads[1][1] == points  # one worker or two: the same measurements
    assert all(np.array_equal(by_threads[1][0][n], curves[n]) for n in curves)


def _two_layers(damage_a: np.ndarray | None, damage_b: np.ndarray | None) -> tuple[dict[str, int], bool]:
    """Layers a (4 units) and b (16 units) of equal total cost, with b's magnitudes far below a's."""
    layers = [
        Layer("a", np.array([4.0, 5.0, 6.0, 7.0]), damage=damage_a),
        Layer("b", np.linspace(0.01, 0.02, 16), damage=damage_b),
    ]
    terms = [Term(100.0, ((("a", 4),),)), Term(100.0, ((("b", 16),),))]
    sizes = {"a": 4, "b": 16}
    model = CostModel(terms, sizes)
    alloc = allocate(layers, model, model, BudgetConfig(target=0.75, metric="flops", method="halp"))
    return alloc.counts, alloc.reached


def test_halp_follows_the_measured_damage_whatever_the_magnitudes() -> None:
    free, steep = np.zeros(17), np.linspace(0.0, 10.0, 17)
    counts, reached = _two_layers(steep[:5], free)
    assert reached and counts == {"a": 4, "b": 8}
    counts, reached = _two_layers(free[:5], steep)
    assert reached and counts == {"a": 2, "b": 16}
    blocked = np.array([0.0, 0.0, np.inf, np.inf, np.inf])  # a's second cut was refused: never taken
    counts, reached = _two_layers(blocked, steep * 100)
    assert reached and counts["a"] == 3


@pytest.fixture(scope="module")
def xxs(exported) -> Path:
    return exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")


def test_the_measured_cut_is_the_cut_the_passes_write(xxs: Path) -> None:
    """Sensitivity rewrites one layer's group directly on the canonical model (no second discovery, no checks); for
    a layer of every kind that gives the model the passes write for the same one-layer plan, to the bit."""
    from passes._core.problem import cut_one_layer, discover, plan_of

    problem = discover(onnx.load(str(xxs)), CompressConfig(target_flops=0.5))
    x = image(64, seed=2)
    kinds = set()
    for ly in problem.layers:
        if ly.kind in kinds:
            continue
        kinds.add(ly.kind)
        kept = list(range(0, ly.size, 2))  # every other unit: not a prefix, so the indices matter
        plan = plan_of(problem, {ly.name: kept})
        written = problem.apply(plan)[0]
        measured = cut_one_layer(problem, ly.name, kept)
        assert np.array_equal(run(measured, x), run(written, x)), ly.name
        assert not np.allclose(run(measured, x), run(problem.model, x)), ly.name  # the cut did change the output
    assert kinds == {"heads", "head_dim", "neurons", "width", "channels"}


def test_a_group_the_output_ignores_is_cut_first_whatever_its_norms(xxs: Path) -> None:
    """Zero every consumer of one decoder channel group: its filters keep their norms, so weight magnitudes rank it
    like any other, but cutting it changes nothing. The measured budget sees a flat damage curve and takes the
    group down to its floor before anything else; the magnitude budget keeps most of it."""
    model = onnx.load(str(xxs))
    groups = find_units(model, "channels")
    group = next(g for g in groups if g.id == "decoder.fpn_convs.0.0")
    dead = zero_kept(model, groups, {group.id: []})
    calib = [{model.graph.input[0].name: image(64, seed=s)} for s in range(3)]
    measured, rep = compress(dead, CompressConfig(target_flops=0.4, importance="sensitivity", calib=calib))
    magnitude, _ = compress(dead, CompressConfig(target_flops=0.4, allocation="halp"))
    assert any(n.startswith("sensitivity: ") for n in rep.notes), rep.notes
    assert rep.extra["budget"]["method"] == "halp"
    row = next(r for r in rep.rows if r["layer"] == group.name)
    floor = 8 * math.ceil(math.ceil(0.1 * group.size) / 8)  # 10 % of its channels, rounded up to the step of 8
    assert row["kept"] == floor < row["units"]
    assert len(read_plan(magnitude)["channels"].get(group.name, {"kept": range(group.size)})["kept"]) > floor
    for out in (measured, magnitude):  # HALP stops at the first cut under the target
        assert 0.35 <= graph_stats(out).flops / graph_stats(dead).flops <= 0.4


def test_cli_sensitivity_and_its_usage_errors(xxs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.onnx"
    args = [str(xxs), "-o", str(out), "--target-flops", "0.5", "--units", "channels"]
    assert main([*args, "--importance", "sensitivity", "--calib", "synthetic", "--calib-count", "2"]) == 0
    assert read_plan(onnx.load(str(out)))["channels"]
    assert "(at most 4 per layer)" in capsys.readouterr().out  # --damage-points auto on a model of milliseconds
    out.unlink()
    for extra, message in [
        (["--importance", "sensitivity"], "give --calib DATA"),
        (["--importance", "l2", "--calib", "synthetic"], "--calib is read to measure damage"),
        (["--importance", "sensitivity", "--calib", "synthetic", "--allocation", "uniform"], "only the HALP"),
        (["--importance", "sensitivity", "--calib", "synthetic", "--calib-count", "0"], "argument --calib-count"),
    ]:
        try:
            code = main([*args, *extra])
        except SystemExit as exc:
            code = exc.code
        assert code == 2, extra
        assert message in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--importance", "sensitivity", "--calib", str(empty)]) == 1
    assert "no images" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--calib", "noise", "--calib-count", "1", "--damage-points", "1"]) == 0
    assert "(at most 1 per layer)" in capsys.readouterr().out  # auto measures 4 on this small model


def test_measured_damage_is_the_default_where_images_are_given(xxs: Path, tmp_path: Path) -> None:
    """No --importance: images given (--calib) value the cuts by measured damage; none given, the no-images default
    (compress.NO_IMAGES). The report says which valuation was used."""
    import json

    from passes.compress import NO_IMAGES

    args = [str(xxs), "--target-flops", "0.5", "--units", "heads"]  # one kind: the valuation is what is checked
    out, rep = tmp_path / "a.onnx", tmp_path / "a.json"
    assert main([*args, "-o", str(out), "--report", str(rep), "--calib", "synthetic", "--calib-count", "2"]) == 0
    extra = json.loads(rep.read_text())["extra"]
    assert extra["budget"]["importance"] == "sensitivity" and extra["budget"]["method"] == "halp"
    assert extra["valuation"] == "measured output damage on 2 synthetic images"
    out, rep = tmp_path / "b.onnx", tmp_path / "b.json"
    assert main([*args, "-o", str(out), "--report", str(rep), "--calib-count", "2"]) == 0
    extra = json.loads(rep.read_text())["extra"]
    assert extra["budget"]["importance"] == NO_IMAGES[0]
    assert extra["valuation"].startswith(f"measured output damage on 2 {NO_IMAGES[1]} images")


def test_the_default_image_count_keeps_the_pixels() -> None:
    from passes.compress import default_calib_count

    assert [default_calib_count((s, s)) for s in (64, 128, 256, 512, 1024)] == [8, 8, 2, 1, 1]
