"""Tests of ``passes.optimize``: exact LayerNorm fusion and layout-chain rewrites on project MobileViT exports (legacy
at opsets 13 and 17, dynamo at 18), the Jetson Nano refusal, the layout planner on its own, and the CLI."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fileformat.errors import UsageError
from fileformat.metadata import read_metadata
from passes.optimize import OptimizeConfig, main, optimize, plan_layout_chain, resolve_target

ATOL = 1e-5


def _run(model: onnx.ModelProto, x: np.ndarray, optimised: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _max_diff(a: onnx.ModelProto, b: onnx.ModelProto, size: int = 64) -> float:
    """Largest output difference on an input the pass never saw (seed 7, not the pass's seed 0), with onnxruntime's
    optimisations off and on (the latter is what a user runs)."""
    x = np.random.default_rng(7).standard_normal((1, 3, size, size)).astype(np.float32)
    return max(float(np.abs(_run(a, x, opt) - _run(b, x, opt)).max()) for opt in (False, True))


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _unfold_chains(model: onnx.ModelProto) -> int:
    """MobileViT unfold/fold chains as exported: Reshape > Transpose > Reshape > Transpose > Reshape, each tensor
    read once."""
    producer = {o: n for n in model.graph.node for o in n.output}
    pattern = ["Reshape", "Transpose", "Reshape", "Transpose", "Reshape"]
    count = 0
    for node in model.graph.node:
        seq, cur = [node.op_type], node
        while len(seq) < 5 and cur.input and cur.input[0] in producer:
            cur = producer[cur.input[0]]
            seq.append(cur.op_type)
        count += seq[::-1] == pattern
    return count


@pytest.mark.parametrize("opset", [13, 17])
def test_exact_on_mobilevit_legacy(exported, opset: int) -> None:
    """cpu target: outputs within 1e-5; every decomposed LayerNorm fused (opset 13 raised to 17), every unfold and
    fold chain (5 nodes) rewritten shorter."""
    model = onnx.load(str(exported("mobilevit_xxs", opset=opset)))
    before = _ops(model)
    out, report = optimize(model, OptimizeConfig(target="cpu"))
    after = _ops(out)
    assert _max_diff(model, out) <= ATOL
    rows = {r["rewrite"]: r for r in report.rows}
    assert all(r["max_abs_diff"] <= ATOL for r in rows.values() if "max_abs_diff" in r)
    assert after["LayerNormalization"] == 21  # 9 transformer layers x 2 + 3 block norms
    if opset == 13:
        assert before["LayerNormalization"] == 0 and before["Pow"] == 21
        assert rows["layernorm"]["status"] == "applied" and rows["layernorm"]["applied"] == 21
        assert after["Pow"] == after["Sqrt"] == 0
        assert _opset(out) == 17 and read_metadata(out)["opset"] == 17
    else:
        assert rows["layernorm"]["status"] == "nothing to fuse"
        assert _opset(out) == 17
    assert _unfold_chains(model) == 6 and _unfold_chains(out) == 0  # 3 MobileViT blocks, one unfold + one fold each
    assert rows["layout"]["status"] == "applied"
    assert after["Transpose"] < before["Transpose"] and after["Reshape"] < before["Reshape"]
    assert len(out.graph.node) < len(model.graph.node)
    history = read_metadata(out)["history"][-1]
    assert history["pass"] == "optimize" and history["target"] == "cpu"
    print(f"\nopset {opset}: {len(model.graph.node)} -> {len(out.graph.node)} nodes; {report.rows}")


def test_exact_on_mobilevit_dynamo(exported) -> None:
    """The dynamo export (opset 18, LayerNormalization already there; shapes as constants): layout chains only."""
    model = onnx.load(str(exported("mobilevit_xxs", opset=18, exporter="dynamo")))
    out, report = optimize(model, OptimizeConfig(target="cpu"))
    assert _max_diff(model, out) <= ATOL
    assert report.rows[1]["status"] == "applied"
    assert _ops(out)["Transpose"] < _ops(model)["Transpose"]
    assert _opset(out) == 18


def test_layernorm_fusion_refused_for_nano(exported) -> None:
    """jetson-nano (TensorRT 8.2 has no LayerNormalization): the chains and opset 13 stay; layout still applies."""
    model = onnx.load(str(exported("mobilevit_xxs", opset=13)))
    assert not resolve_target("nano").layernorm and resolve_target("orin").layernorm
    out, report = optimize(model, OptimizeConfig(target="jetson-nano"))
    assert _ops(out)["LayerNormalization"] == 0 and _ops(out)["Pow"] == 21
    assert _opset(out) == 13
    assert report.rows[0]["status"].startswith("not for jetson-nano")
    assert any("21 decomposed LayerNorm(s) kept" in s.reason for s in report.skipped)
    assert report.rows[1]["status"] == "applied"
    assert _max_diff(model, out) <= ATOL
    orin, _ = optimize(model, OptimizeConfig(target="orin"))  # TensorRT 8.6 imports it
    assert _ops(orin)["LayerNormalization"] == 21


def test_a_rewrite_over_tolerance_is_refused_alone(exported) -> None:
    """With ``atol=0`` the LayerNorm fusion (float32 rounding of a different formula, ~1e-7) is refused and reported;
    the layout rewrite (data movement only, bit-exact) still applies."""
    model = onnx.load(str(exported("mobilevit_xxs", opset=13)))
    out, report = optimize(model, OptimizeConfig(target="cpu", atol=0.0))
    rows = {r["rewrite"]: r for r in report.rows}
    assert rows["layernorm"]["status"].startswith("refused: outputs differ")
    assert rows["layout"]["status"] == "applied" and rows["layout"]["max_abs_diff"] == 0.0
    assert _ops(out)["LayerNormalization"] == 0 and _opset(out) == 13


# ------------------------------------------------------------------------------------------------ layout planner


def _apply(x: np.ndarray, steps: list[tuple[str, list[int]]]) -> np.ndarray:
    for kind, arg in steps:
        x = np.transpose(x, arg) if kind == "Transpose" else x.reshape(arg)
    return x


def test_plan_mobilevit_unfold_and_fold() -> None:
    """timm's unfold of a [1, 64, 8, 8] map into 2x2 patches (5 ops) is one transpose between two reshapes; so is
    the fold; both reproduce the chain element for element."""
    unfold = [
        ("Reshape", [256, 2, 4, 2]),
        ("Transpose", [0, 2, 1, 3]),
        ("Reshape", [1, 64, 16, 4]),
        ("Transpose", [0, 3, 2, 1]),
        ("Reshape", [4, 16, 64]),
    ]
    fold = [
        ("Reshape", [1, 4, 16, 64]),
        ("Transpose", [0, 3, 2, 1]),
        ("Reshape", [256, 4, 2, 2]),
        ("Transpose", [0, 2, 1, 3]),
        ("Reshape", [1, 64, 8, 8]),
    ]
    for shape, chain in (([1, 64, 8, 8], unfold), ([4, 16, 64], fold)):
        plan = plan_layout_chain(shape, chain)
        assert plan is not None and [k for k, _ in plan] == ["Reshape", "Transpose", "Reshape"]
        x = np.arange(int(np.prod(shape))).reshape(shape)
        assert np.array_equal(_apply(x, plan), _apply(x, chain))


def test_plan_simple_cases() -> None:
    """Transpose pairs merge (or vanish), reshape pairs merge, identities vanish, and a split that is not a
    factorisation is left alone."""
    assert plan_layout_chain([2, 3, 4], [("Transpose", [1, 0, 2]), ("Transpose", [1, 0, 2])]) == []
    assert plan_layout_chain([2, 3, 4], [("Transpose", [1, 2, 0]), ("Transpose", [1, 0, 2])]) == [
        ("Transpose", [2, 1, 0])
    ]
    assert plan_layout_chain([2, 3, 4], [("Reshape", [6, 4]), ("Reshape", [24])]) == [("Reshape", [24])]
    assert plan_layout_chain([2, 3, 4], [("Reshape", [2, 3, 4])]) == []
    assert plan_layout_chain([6, 4], [("Reshape", [4, 6]), ("Transpose", [1, 0])]) is None  # 6 is not 4 x k
    # a transpose that only moves size-1 axes is a reshape
    plan = plan_layout_chain([1, 5, 1, 4], [("Transpose", [2, 1, 0, 3])])
    assert plan == []


def test_plan_random_chains_reproduce_the_chain() -> None:
    """Random chains of transposes and factor-wise reshapes: whatever the planner returns is shorter or equal and
    element-for-element the same."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        shape = [int(d) for d in rng.choice([1, 2, 3, 4, 6], size=rng.integers(2, 5))]
        steps: list[tuple[str, list[int]]] = []
        cur = list(shape)
        for _ in range(rng.integers(1, 6)):
            if rng.random() < 0.5:
                perm = [int(p) for p in rng.permutation(len(cur))]
                steps.append(("Transpose", perm))
                cur = [cur[p] for p in perm]
            else:
                total = int(np.prod(cur))
                splits = [d for d in (1, 2, 3, 4, 6, 8, 12) if total % d == 0]
                a = int(rng.choice(splits))
                b = int(rng.choice([d for d in splits if (total // a) % d == 0]))
                cur = [a, b, total // (a * b)]
                steps.append(("Reshape", cur))
        plan = plan_layout_chain(shape, steps)
        if plan is None:
            continue
        x = np.arange(int(np.prod(shape))).reshape(shape)
        want = _apply(x, steps)
        got = _apply(x, plan)
        assert got.shape == want.shape and np.array_equal(got, want), (shape, steps, plan)
        assert len(plan) <= 3 and sum(k == "Transpose" for k, _ in plan) <= 1
        checked += 1
    assert checked > 150


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Default output beside the input, refused again without --force; the ORT offline graph for cpu only; usage
    errors exit 2; nothing to do exits 1 and writes nothing."""
    src = tmp_path / "m.onnx"
    src.write_bytes(Path(exported("mobilevit_xxs", opset=13)).read_bytes())
    default = tmp_path / "m.optimize.onnx"
    assert main([str(src), "--target", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"layernorm \d+ -> \d+ nodes, layout \d+ -> \d+ nodes", printed) and default.is_file()
    ort.InferenceSession(str(default), providers=["CPUExecutionProvider"])
    assert main([str(src), "--target", "cpu"]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main([str(src), "--target", "cpu", "--force"]) == 0
    capsys.readouterr()

    offline = tmp_path / "ort.onnx"
    assert main([str(src), "-o", str(offline), "--target", "cpu", "--ort-offline"]) == 0
    assert "runs in onnxruntime only" in capsys.readouterr().out
    model = onnx.load(str(offline))
    assert any(n.domain == "com.microsoft" for n in model.graph.node)
    assert read_metadata(model)["history"][-1]["rewrites"]["ort_offline"]["level"] == "extended"
    assert _max_diff(onnx.load(str(src)), model) <= ATOL
    # ALL: the CPU layout transforms too (NCHWc), for a deploying session that does not optimise again
    every = tmp_path / "ort_all.onnx"
    assert main([str(src), "-o", str(every), "--target", "cpu", "--ort-offline", "--ort-level", "all"]) == 0
    capsys.readouterr()
    model = onnx.load(str(every))
    assert read_metadata(model)["history"][-1]["rewrites"]["ort_offline"]["level"] == "all"
    assert _max_diff(onnx.load(str(src)), model) <= ATOL

    for argv in (
        ["--target", "jetson-nano", "--ort-offline"],  # onnxruntime-only file for a TensorRT device
        ["--target", "no-such-device"],
        ["--atol", "-1"],  # refused when parsed (SystemExit), the others when the pass starts
    ):
        try:
            code = main([str(src), "-o", str(tmp_path / "x.onnx"), *argv])
        except SystemExit as exc:
            code = exc.code
        assert code == 2, argv
        capsys.readouterr()
    # the optimised model for the Nano: no layout chain left, no LayerNorm fusion allowed -> nothing to do
    nano = tmp_path / "nano.onnx"
    assert main([str(src), "-o", str(nano), "--target", "nano"]) == 0
    assert main([str(nano), "-o", str(tmp_path / "again.onnx"), "--target", "nano"]) == 1
    assert "no rewrite applies" in capsys.readouterr().err
    assert not (tmp_path / "again.onnx").exists() and not (tmp_path / "x.onnx").exists()


def test_unknown_target_in_library_is_a_usage_error(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", opset=17)))
    with pytest.raises(UsageError, match="unknown target"):
        optimize(model, OptimizeConfig(target="tpu"))
    with pytest.raises(UsageError, match="onnxruntime-only"):
        optimize(model, OptimizeConfig(target="jetson-orin", ort_offline=True))


def test_every_target_name_resolves() -> None:
    for name, short in itertools.product(("jetson-nano", "jetson-orin", "cpu"), (False, True)):
        key = name.split("-")[-1] if short else name
        assert resolve_target(key).name == name
