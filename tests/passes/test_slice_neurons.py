"""slice_neurons: the zeroing oracle on real exports (SiLU and GELU-as-Erf MLPs), counts, plans, torch parity, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _helpers_prune import (
    ATOL,
    apply_plan_torch_,
    export_with_weight_map,
    initializer_map,
    input_for,
    mha_model,
    oracle_error,
    random_keep_sets,
    run_ort,
    vit_tiny,
)

from fileformat.params import count_params
from fileformat.plan import read_plan
from passes.prune_heads import PruneHeadsConfig, prune_heads
from passes.slice_neurons import SliceNeuronsConfig, find_mlps, main, neuron_importance, slice_neurons, zero_neurons


def _code(main, argv: list[str]) -> int:
    """The exit status of ``main(argv)``: returned, or raised by argparse (``SystemExit``) for a value refused when
    parsed."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _oracle(model: onnx.ModelProto, seeds: tuple[int, ...]) -> None:
    mlps = find_mlps(model)
    assert mlps and all(m.prunable for m in mlps), [m.skip_reason for m in mlps]
    for seed in seeds:
        keep = random_keep_sets(mlps, seed)
        pruned, _ = slice_neurons(model, SliceNeuronsConfig(keep_sets=keep))
        err = oracle_error(model, pruned, mlps, keep, zero_neurons)
        assert err <= ATOL, f"seed {seed}: max abs {err:.3g}"


@pytest.mark.parametrize(
    ("exporter", "opset", "fused"), [("legacy", 17, None), ("legacy", 13, False), ("dynamo", 17, None)]
)
def test_zeroing_oracle_mobilevit_xxs(exported, exporter: str, opset: int, fused: bool | None) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=opset, exporter=exporter, fused_attn=fused)))
    mlps = find_mlps(model)
    assert [m.hidden for m in mlps] == [128] * 2 + [160] * 4 + [192] * 3  # MLP ratio 2 of dims 64/80/96
    assert mlps[0].id == "backbone.stages.2.1.transformer.0.mlp"
    _oracle(model, seeds=(0,))


def test_zeroing_oracle_vit_gelu() -> None:
    _, model = vit_tiny()
    mlps = find_mlps(model)
    assert len(mlps) == 12 and mlps[0].id == "blocks.0.mlp" and mlps[0].hidden == 768
    ops = {mlps[0].view.model.graph.node[i].op_type for i in mlps[0].group.nodes}  # node indices of its view
    assert "Erf" in ops  # GELU exported as its erf formula
    _oracle(model, seeds=(0, 1))


def test_parameter_count_is_analytical(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17)))
    mlps = find_mlps(model)
    pruned, report = slice_neurons(model, SliceNeuronsConfig(ratio=0.25))
    # per MLP: removed neurons x (fc1 column + fc1 bias + fc2 row) = removed x (2 x dim + 1); hidden = 2 x dim
    expected = sum((m.hidden // 4) * (m.hidden + 1) for m in mlps)
    assert count_params(model) - count_params(pruned) == expected == report.params_before - report.params_after
    assert [r["neurons_after"] for r in report.rows][:3] == [96, 96, 120]
    assert mlps[0].params_per_neuron == 129 and mlps[0].flops_per_neuron == 2 * 2 * 64 * 64  # 4x16 tokens


def test_importance_matches_fc_norms() -> None:
    _, model = vit_tiny()
    (mlp,) = find_mlps(model)[:1]
    w = initializer_map(model)
    wm = {
        v["param"]: k
        for k, v in json.loads(next(p.value for p in model.metadata_props if p.key == "vitseg.weight_map")).items()
    }
    fc1 = w[wm["blocks.0.mlp.fc1.weight"]]  # ONNX layout [in, out]
    fc2 = w[wm["blocks.0.mlp.fc2.weight"]]  # [hidden, out]
    expected = np.sqrt(np.square(fc1).sum(axis=0) + np.square(fc2).sum(axis=1))
    assert np.allclose(neuron_importance(model, [mlp], "l2")[mlp.id], expected, rtol=1e-6)


def test_heads_then_neurons_plan_equals_torch() -> None:
    """Both passes in a row; the combined plan rebuilt on timm's modules gives the same outputs."""
    net, model = vit_tiny()
    half, _ = prune_heads(model, PruneHeadsConfig(keep=2))
    both, report = slice_neurons(half, SliceNeuronsConfig(ratio=0.5, norm="l1"))
    assert report.modified and all(r["neurons_after"] == 384 for r in report.rows)
    plan = read_plan(both)
    assert len(plan["heads"]) == 12 and len(plan["neurons"]) == 12
    assert set(plan["slices"]["blocks.3.mlp.fc1.weight"]) == {"0"} and set(
        plan["slices"]["blocks.3.mlp.fc2.weight"]
    ) == {"1"}
    small = apply_plan_torch_(copy.deepcopy(net), plan)
    x = input_for(model)
    with torch.no_grad():
        ref = small(torch.from_numpy(x)).numpy()
    assert np.abs(run_ort(both, x) - ref).max() <= ATOL
    reexported = export_with_weight_map(small, 64, opset=17, fused=False)
    assert np.abs(run_ort(reexported, x) - ref).max() <= ATOL


def test_keep_all_unchanged_and_idempotent(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17)))
    same, report = slice_neurons(model, SliceNeuronsConfig(ratio=0.0))
    assert not report.modified
    assert [n.SerializeToString() for n in same.graph.node] == [n.SerializeToString() for n in model.graph.node]
    once, _ = slice_neurons(model, SliceNeuronsConfig(keep=100))
    again, rep2 = slice_neurons(once, SliceNeuronsConfig(plan=read_plan(once)))
    assert not rep2.modified and read_plan(again) == read_plan(once)


def test_no_mlp_in_plain_attention() -> None:
    out, report = slice_neurons(mha_model(), SliceNeuronsConfig(keep=1))
    assert not report.modified and "nothing to prune: no transformer MLP found" in report.format()


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--keep", "0"], "is not >= 1", 2),
        (["--keep", "200"], "above the 128 neurons", 1),
        (["--ratio", "-0.1"], "[0, 1)", 2),
        (["--plan", "PLAN_HEADS_ONLY"], "no 'neurons' section", 1),
        (["--plan", "PLAN_UNKNOWN"], "unknown block", 1),
        (["--plan", "PLAN_RANGE"], "out of range", 1),
    ],
)
def test_cli_bad_options(exported, tmp_path: Path, capsys, args: list[str], message: str, code: int) -> None:
    src = exported("mobilevit_xxs", size=64, opset=17)
    plans = {
        "PLAN_HEADS_ONLY": {"heads": {"backbone.stages.2.1.transformer.0.attn": [0]}},
        "PLAN_UNKNOWN": {"neurons": {"backbone.stages.9.mlp": [0]}},
        "PLAN_RANGE": {"neurons": {"backbone.stages.2.1.transformer.0.mlp": [0, 128]}},
    }
    for name, plan in plans.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(plan))
    args = [a if a not in plans else str(tmp_path / f"{a}.json") for a in args]
    out = tmp_path / "o.onnx"
    assert _code(main, [str(src), "-o", str(out), *args]) == code  # 2: usage error, 1: not for this model
    assert message in capsys.readouterr().err and not out.exists()


def test_cli_slices_and_reports(exported, tmp_path: Path, capsys) -> None:
    src = exported("mobilevit_xxs", size=64, opset=17)
    out, rep = tmp_path / "n.onnx", tmp_path / "n.json"
    assert main([str(src), "-o", str(out), "--keep", "32", "--norm", "l1", "--report", str(rep)]) == 0
    assert "slice_neurons: 1184 of 1472 neurons removed in 9 of 9 MLPs" in capsys.readouterr().out
    data = json.loads(rep.read_text())
    assert [r["neurons_after"] for r in data["rows"]] == [32] * 9 and data["params_after"] < data["params_before"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
