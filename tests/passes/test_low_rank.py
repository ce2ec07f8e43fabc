"""low_rank: exact at full rank, error = discarded energy, savings reported and applied, plan and weight map, CLI."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers_prune import input_for, run_ort
from onnx import TensorProto, helper, numpy_helper

from fileformat.metadata import read_metadata, weight_sources
from fileformat.params import count_params
from fileformat.plan import read_plan
from passes._core.canonical import canonicalize
from passes.low_rank import LowRankConfig, choose_rank, low_rank, main

EXACT = 1e-5


@pytest.fixture(scope="module")
def xxs(exported: Callable[..., Path]) -> onnx.ModelProto:
    """MobileViT-XXS + UPerNet-128 at 64x64, legacy exporter, perturbed weights."""
    return onnx.load(str(exported("mobilevit_xxs", size=64)))


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _math(arr: np.ndarray, op: str, trans_b: bool = False) -> np.ndarray:
    """A stored weight as ``[in, out]`` (``y = x @ W``), float64."""
    arr = arr.astype(np.float64)
    if op == "Conv":
        return arr.reshape(arr.shape[0], arr.shape[1]).T
    return arr.T if trans_b else arr


def _tail(w: np.ndarray, r: int) -> float:
    s = np.linalg.svd(w, compute_uv=False)
    return float(np.sqrt((s[r:] ** 2).sum() / (s**2).sum()))


# --------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_full_rank_is_exact(exported: Callable[..., Path], exporter: str) -> None:
    """rank = min(in, out) everywhere (``--min-saving`` negative: factor layers that grow): the same outputs."""
    src = onnx.load(str(exported("mobilevit_xxs", size=64, exporter=exporter)))
    out, report = low_rank(src, LowRankConfig(rank_ratio=1.0, min_saving=-1.0))
    rows = report.rows
    assert report.modified and len(rows) >= 60 and all(r["applied"] for r in rows)
    assert all(r["rank"] == min(r["in"], r["out"]) for r in rows)
    assert {r["op"] for r in rows} == {"MatMul", "Conv"}
    assert max(r["rel_error"] for r in rows) < 1e-6
    assert report.params_after > report.params_before  # full rank never saves
    x = input_for(src)
    err = float(np.abs(run_ort(src, x) - run_ort(out, x)).max())
    assert err <= EXACT, err
    assert len(read_plan(out)["low_rank"]) == len(rows)


def _toy(nodes: list, inits: list, out_dim: list[int], in_dim: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dim)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dim)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _arr(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Seeded normal values scaled by 1/sqrt(fan-in), so activations stay of order 1 through the toy layers."""
    fan_in = shape[1] if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def test_gemm_conv_and_tied_weights_without_weight_map() -> None:
    """A foreign file (no vitseg metadata): Gemm with transB 0 and 1 (alpha, beta, C), a strided 1x1 Conv with bias,
    and one weight read by two MatMuls (canonicalize gives each its own copy; the equal factors are stored once)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(_arr(rng, 20, 12), "g1_w"),  # transB=1: [out, in]
        numpy_helper.from_array(_arr(rng, 20), "g1_c"),
        numpy_helper.from_array(_arr(rng, 20, 16), "g2_w"),  # transB=0: [in, out]
        numpy_helper.from_array(_arr(rng, 16), "g2_c"),
        numpy_helper.from_array(_arr(rng, 16, 16), "tied"),
        numpy_helper.from_array(np.array([2, 4, 2, 2], dtype=np.int64), "shape"),
        numpy_helper.from_array(_arr(rng, 24, 4, 1, 1), "conv_w"),
        numpy_helper.from_array(_arr(rng, 24), "conv_b"),
        numpy_helper.from_array(np.array([2, 24 * 1 * 1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "g1_w", "g1_c"], ["h1"], name="g1", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Gemm", ["h1", "g2_w", "g2_c"], ["h2"], name="g2"),
        helper.make_node("MatMul", ["h2", "tied"], ["h3"], name="mm1"),
        helper.make_node("MatMul", ["h3", "tied"], ["h4"], name="mm2"),
        helper.make_node("Reshape", ["h4", "shape"], ["h5"]),
        helper.make_node("Conv", ["h5", "conv_w", "conv_b"], ["h6"], name="conv", strides=[2, 2], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["h6", "flat"], ["y"]),
    ]
    model = _toy(nodes, inits, [2, 24], [2, 12])
    x = _arr(rng, 2, 12)
    ref = run_ort(model, x)
    full, report = low_rank(model, LowRankConfig(rank_ratio=1.0, min_saving=-1.0))
    assert sorted(r["op"] for r in report.rows) == ["Conv", "Gemm", "Gemm", "MatMul", "MatMul"]
    assert all(r["applied"] for r in report.rows)
    assert set(read_plan(full)["low_rank"]) == {"graph:g1", "graph:g2", "graph:mm1", "graph:mm2", "graph:conv"}
    assert float(np.abs(run_ort(full, x) - ref).max()) <= EXACT
    # the two copies of the tied weight were factored alike and are stored once again
    readers = [n for n in full.graph.node if n.name in ("mm1", "mm2", "mm1_lowrank", "mm2_lowrank")]
    assert len(readers) == 4 and len({n.input[1] for n in readers}) == 2
    half, report = low_rank(model, LowRankConfig(rank_ratio=0.5))
    applied = {r["layer"]: r for r in report.rows if r["applied"]}
    assert set(applied) == {"graph:g1", "graph:g2", "graph:conv"}  # 16x16 saves nothing at rank 8
    assert applied["graph:conv"]["rank"] == 2 and applied["graph:conv"]["params_after"] == 2 * (4 + 24)
    assert report.params_before - report.params_after == sum(r["params"] - r["params_after"] for r in applied.values())
    assert count_params(half) == report.params_after
    # the strided conv keeps its stride on the first factor; the second is a plain 1x1
    convs = {n.name: n for n in half.graph.node if n.op_type == "Conv"}
    attrs = {k: {a.name: helper.get_attribute_value(a) for a in n.attribute} for k, n in convs.items()}
    assert attrs["conv_lowrank"]["strides"] == [2, 2] and "strides" not in attrs["conv"]


def test_non_float_weights_are_nothing_to_do() -> None:
    w = numpy_helper.from_array(np.ones((8, 8), dtype=np.float16), "w")
    cast = helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16)
    mm = helper.make_node("MatMul", ["xh", "w"], ["yh"], name="mm")
    back = helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)
    model = _toy([cast, mm, back], [w], [2, 8], [2, 8])
    out, report = low_rank(model, LowRankConfig(rank_ratio=0.25))
    assert report.nothing_to_do and not report.modified
    assert "FLOAT16" in report.skipped[0].reason and out == model


# ------------------------------------------------------------------------------------------- error and rank
def test_relative_error_equals_discarded_energy(xxs: onnx.ModelProto) -> None:
    """||W - A B||_F / ||W||_F of the stored factors = sqrt(discarded energy) of W's singular values, per layer."""
    canon = _inits(canonicalize(xxs))
    for config in (LowRankConfig(rank_ratio=0.25), LowRankConfig(energy=0.8, min_saving=0.0)):
        out, report = low_rank(xxs, config)
        stored = _inits(out)
        applied = [r for r in report.rows if r["applied"]]
        assert applied
        for row in report.rows:
            assert abs(row["rel_error"] - math.sqrt(max(0.0, 1.0 - row["energy"]))) < 1e-5, row
        for row in applied:
            info = report.extra["layers"][row["layer"]]
            w = _math(canon[info["weight"]], row["op"])
            a_name, b_name = info["factors"]
            if row["op"] == "Conv":
                a = stored[a_name].reshape(row["rank"], row["in"]).T.astype(np.float64)
                b = stored[b_name].reshape(row["out"], row["rank"]).T.astype(np.float64)
            else:
                a, b = stored[a_name].astype(np.float64), stored[b_name].astype(np.float64)
            measured = np.linalg.norm(w - a @ b) / np.linalg.norm(w)
            assert abs(measured - _tail(w, row["rank"])) < 1e-5, row["layer"]
            assert abs(measured - row["rel_error"]) < 1e-6


def test_energy_picks_the_smallest_rank(xxs: onnx.ModelProto) -> None:
    canon = _inits(canonicalize(xxs))
    _, report = low_rank(xxs, LowRankConfig(energy=0.8, min_saving=-1.0))
    for row in report.rows:
        w = _math(canon[report.extra["layers"][row["layer"]]["weight"]], row["op"])
        s2 = np.linalg.svd(w, compute_uv=False) ** 2
        frac = np.cumsum(s2) / s2.sum()
        r = row["rank"]
        assert frac[r - 1] >= 0.8 - 1e-9 and (r == 1 or frac[r - 2] < 0.8), row["layer"]


def test_choose_rank() -> None:
    s = np.array([3.0, 2.0, 1.0])  # energies 9/14, 13/14, 14/14
    assert [choose_rank(s, energy=e) for e in (0.5, 9 / 14, 0.65, 0.92, 0.93, 1.0)] == [1, 1, 2, 2, 3, 3]
    assert [choose_rank(s, rank_ratio=q) for q in (1e-3, 1 / 3, 0.5, 1.0)] == [1, 1, 2, 3]
    assert choose_rank(np.zeros(4), energy=0.9) == 1


def test_rank_half_reports_and_applies_the_saving(xxs: onnx.ModelProto) -> None:
    out, report = low_rank(xxs, LowRankConfig(rank_ratio=0.5))
    assert report.modified
    for row in report.rows:
        r, n_in, n_out = row["rank"], row["in"], row["out"]
        assert r == math.ceil(0.5 * min(n_in, n_out))
        saving = 1 - r * (n_in + n_out) / (n_in * n_out)
        assert row["saving"] == pytest.approx(saving, abs=1e-4)
        assert row["applied"] == (saving >= 0.1 - 1e-9)
        assert row["params_after"] == (r * (n_in + n_out) if row["applied"] else n_in * n_out)
    applied = [r for r in report.rows if r["applied"]]
    names = {r["layer"] for r in applied}
    assert any(n.endswith("attn.qkv") for n in names) and any(n.endswith("mlp.fc1") for n in names)
    assert not any(n.endswith("attn.proj") for n in names)  # square: rank in/2 saves nothing
    assert any(r["op"] == "Conv" for r in applied)
    saved = sum(r["params"] - r["params_after"] for r in applied)
    assert report.params_before - report.params_after == saved > 0
    assert (count_params(xxs), count_params(out)) == (report.params_before, report.params_after)
    assert report.flops_after < report.flops_before
    # the plan records each factorisation; the weight map names the factors and moves the bias
    plan = read_plan(out)["low_rank"]
    assert plan == {
        r["layer"]: {
            "kind": "conv" if r["op"] == "Conv" else "linear",
            "in": r["in"],
            "out": r["out"],
            "rank": r["rank"],
        }
        for r in applied
    }
    wmap = read_metadata(out)["weight_map"]
    params = {str(s["param"]): (name, s) for name, e in wmap.items() for s in weight_sources(e)}
    inits = {t.name: list(t.dims) for t in out.graph.initializer}
    for row in applied:
        m, rank = row["layer"], row["rank"]
        assert f"{m}.weight" not in params and f"{m}.bias" not in params
        a_name, a_src = params[f"{m}.0.weight"]
        b_name, b_src = params[f"{m}.1.weight"]
        if row["op"] == "Conv":
            assert inits[a_name] == [rank, row["in"], 1, 1] and inits[b_name] == [row["out"], rank, 1, 1]
            assert not a_src["transposed"] and not b_src["transposed"]
        else:
            assert inits[a_name] == [row["in"], rank] and inits[b_name] == [rank, row["out"]]
            assert a_src["transposed"] and b_src["transposed"]
            assert f"{m}.1.bias" in params  # the Add after the MatMul: the second factor's bias
    history = read_metadata(out)["history"][-1]
    assert history["pass"] == "low_rank" and history["rank_ratio"] == 0.5


def test_include_exclude_and_rerun(xxs: onnx.ModelProto) -> None:
    out, report = low_rank(xxs, LowRankConfig(rank_ratio=0.5, include=r"mlp\.fc1$"))
    assert {r["layer"].rsplit(".", 1)[-1] for r in report.rows} == {"fc1"}
    assert sum(1 for s in report.skipped if "--include" in s.reason) > 40
    _, report = low_rank(xxs, LowRankConfig(rank_ratio=0.5, exclude="decoder|qkv"))
    assert report.rows and not any("decoder" in r["layer"] or "qkv" in r["layer"] for r in report.rows)
    # a second run leaves the factors alone (and the layers that did not save still do not)
    again, report = low_rank(out, LowRankConfig(rank_ratio=0.5, include=r"mlp\.fc1"))
    assert sum(1 for s in report.skipped if "already factored" in s.reason) == 2 * len(read_plan(out)["low_rank"])
    assert report.nothing_to_do


def test_cli(xxs: onnx.ModelProto, exported: Callable[..., Path], tmp_path: Path, capsys) -> None:
    src = tmp_path / "m.onnx"
    shutil.copy(exported("mobilevit_xxs", size=64), src)
    assert main([str(src), "--rank-ratio", "0.5", "--report", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "m.low_rank.onnx").is_file() and (tmp_path / "r.json").is_file()
    out = capsys.readouterr().out
    assert "low_rank: 52 of 64 linear layers factored" in out
    assert main([str(src), "--rank-ratio", "0.5"]) == 2  # exists: --force
    assert main([str(src), "--rank-ratio", "0.5", "--include", "nothing_matches", "-o", str(tmp_path / "n.onnx")]) == 1
    assert not (tmp_path / "n.onnx").exists()
    assert "nothing to factor" in capsys.readouterr().err
    for bad in (["--rank-ratio", "0"], ["--energy", "1.5"]):  # refused when parsed
        with pytest.raises(SystemExit) as exc:
            main([str(src), *bad, "-o", str(tmp_path / "b.onnx")])
        assert exc.value.code == 2, bad
    assert main([str(src), "--rank-ratio", "0.5", "--min-saving", "1", "-o", str(tmp_path / "b.onnx")]) == 2
    capsys.readouterr()
    assert main([str(src), "-o", str(tmp_path / "d.onnx")]) == 0  # no rank given: --rank-ratio 0.5
    assert "52 of 64 linear layers factored" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(src), "--rank-ratio", "0.5", "--energy", "0.9"])
