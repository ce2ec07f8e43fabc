"""prune_heads: the zeroing oracle on real exports, plans, idempotence, analytical counts, torch parity, CLI."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _helpers_prune import (
    ATOL,
    apply_plan_torch_,
    cnn_model,
    export_with_weight_map,
    initializer_map,
    input_for,
    mha_model,
    oracle_error,
    perturb_,
    random_keep_sets,
    run_ort,
    vit_tiny,
)

from fileformat.errors import PassError
from fileformat.metadata import read_metadata
from fileformat.params import count_params
from fileformat.plan import read_plan
from passes.prune_heads import PruneHeadsConfig, find_attention_blocks, head_importance, main, prune_heads, zero_heads


def _code(main, argv: list[str]) -> int:
    """The exit status of ``main(argv)``: returned, or raised by argparse (``SystemExit``) for a value refused when
    parsed."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


XXS_HEADS = 9 * 4  # 2 + 4 + 3 transformer blocks of 4 heads


def _oracle(model: onnx.ModelProto, seeds: tuple[int, ...]) -> None:
    blocks = find_attention_blocks(model)
    assert blocks and all(b.prunable for b in blocks), [b.skip_reason for b in blocks]
    for seed in seeds:
        keep = random_keep_sets(blocks, seed)
        pruned, report = prune_heads(model, PruneHeadsConfig(keep_sets=keep))
        err = oracle_error(model, pruned, blocks, keep, zero_heads)
        assert err <= ATOL, f"seed {seed}: max abs {err:.3g}"
        removed = sum(b.count - len(keep[b.id]) for b in blocks)
        assert report.modified == (removed > 0)


@pytest.mark.parametrize(
    ("exporter", "opset", "fused"),
    [("legacy", 17, None), ("legacy", 17, False), ("legacy", 13, False), ("dynamo", 17, None), ("dynamo", 13, None)],
)
def test_zeroing_oracle_mobilevit_xxs(exported, exporter: str, opset: int, fused: bool | None) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=opset, exporter=exporter, fused_attn=fused)))
    blocks = find_attention_blocks(model)
    assert sum(b.num_heads for b in blocks) == XXS_HEADS
    assert blocks[0].id == "backbone.stages.2.1.transformer.0.attn"
    _oracle(model, seeds=(0, 1) if exporter == "legacy" else (2,))


@pytest.mark.slow
def test_zeroing_oracle_mobilevit_xs(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xs", size=64, opset=17)))
    assert [b.head_dim for b in find_attention_blocks(model)][:1] == [24]  # xs: dim 96, 4 heads
    _oracle(model, seeds=(3,))


@pytest.mark.slow
def test_zeroing_oracle_swin_t(exported) -> None:
    """Swin-T teacher (fused attention: relative-position bias and shifted-window mask expanded over heads)."""
    model = onnx.load(str(exported("swin_t_upernet512", size=64, opset=17)))
    blocks = find_attention_blocks(model)
    assert [b.num_heads for b in blocks] == [3, 3, 6, 6, 12, 12, 12, 12, 12, 12, 24, 24]
    assert blocks[1].id == "backbone.net.layers_0.blocks.1.attn"
    bias = [n for n in blocks[1].group.slices if n not in read_metadata(model)["weight_map"]]
    assert bias, "the per-head relative position bias must be sliced"
    _oracle(model, seeds=(0,))


@pytest.fixture(scope="module")
def vit() -> tuple[torch.nn.Module, onnx.ModelProto]:
    return vit_tiny()


def test_zeroing_oracle_vit_tiny(vit) -> None:
    _, model = vit
    blocks = find_attention_blocks(model)
    assert len(blocks) == 12 and blocks[0].id == "blocks.0.attn" and blocks[0].head_dim == 64
    _oracle(model, seeds=(0, 1))


def test_onnx_plan_equals_torch_plan_vit(vit) -> None:
    """The plan applied in ONNX == the plan's slices applied to timm's modules (num_heads fixed), exported."""
    net, model = vit
    blocks = find_attention_blocks(model)
    keep = {
        b.id: sorted(np.random.default_rng(i).choice(3, size=1 + i % 2, replace=False).tolist())
        for i, b in enumerate(blocks)
    }
    pruned, _ = prune_heads(model, PruneHeadsConfig(keep_sets=keep))
    plan = read_plan(pruned)
    assert plan["heads"]["blocks.0.attn"] == {"kept": keep["blocks.0.attn"], "total": 3}
    assert set(plan["slices"]["blocks.0.attn.qkv.weight"]) == {"0"}  # torch layout: rows of [out, in]
    assert set(plan["slices"]["blocks.0.attn.proj.weight"]) == {"1"}
    small = apply_plan_torch_(copy.deepcopy(net), plan)
    reexported = export_with_weight_map(small.eval(), 64, opset=17, fused=False)
    x = input_for(model)
    assert np.abs(run_ort(pruned, x) - run_ort(reexported, x)).max() <= ATOL
    with torch.no_grad():
        assert np.abs(small(torch.from_numpy(x)).numpy() - run_ort(pruned, x)).max() <= ATOL


def test_onnx_plan_equals_torch_plan_mobilevit(exported) -> None:
    from exporters.export import ExportOptions, export_torch_model
    from models.registry import build_model

    path = exported("mobilevit_xxs", size=64, opset=17, exporter="legacy", fused_attn=False)
    model = onnx.load(str(path))
    pruned, _ = prune_heads(model, PruneHeadsConfig(ratio=0.5, norm="l1"))
    plan = read_plan(pruned)
    assert all(len(e["kept"]) == 2 for e in plan["heads"].values()) and len(plan["heads"]) == 9
    torch.manual_seed(0)
    net = perturb_(build_model("mobilevit_xxs"), 0)  # the fixture's weights (same seeds)
    apply_plan_torch_(net, plan)
    out = path.parent / "torch_pruned_xxs.onnx"
    export_torch_model(net, out, ExportOptions(model="mobilevit_xxs", input_size=64, opset=17, fused_attn=False))
    x = input_for(model)
    assert np.abs(run_ort(pruned, x) - run_ort(onnx.load(str(out)), x)).max() <= ATOL


def test_parameter_count_is_analytical(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17)))
    blocks = find_attention_blocks(model)
    pruned, report = prune_heads(model, PruneHeadsConfig(keep=1))
    # per block: removed heads x head_dim x (4 x dim) weights + 3 x head_dim qkv biases per head
    expected = sum((b.num_heads - 1) * b.head_dim * (4 * b.num_heads * b.head_dim + 3) for b in blocks)
    assert count_params(model) - count_params(pruned) == expected
    assert report.params_before - report.params_after == expected
    assert report.flops_before - report.flops_after == sum(3 * b.flops_per_head for b in blocks)
    row = report.rows[0]
    assert (row["heads"], row["heads_after"], row["unit_size"]) == (4, 1, 16)
    assert row["params"] == 4 * row["params_after"] == 16576  # 64x192 + 192 + 64x64


def test_keep_all_is_unchanged_and_plans_are_idempotent(exported, tmp_path: Path) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17)))
    same, report = prune_heads(model, PruneHeadsConfig(keep=4))
    assert not report.modified and "unchanged" in report.format()
    assert [n.SerializeToString() for n in same.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert initializer_map(same).keys() == initializer_map(model).keys()
    once, _ = prune_heads(model, PruneHeadsConfig(ratio=0.5))
    plan = read_plan(once)
    twice, report2 = prune_heads(once, PruneHeadsConfig(plan=plan))
    assert not report2.modified and read_plan(twice) == plan
    # a later plan composes: indices stay those of the original model
    first = plan["heads"]["backbone.stages.2.1.transformer.0.attn"]["kept"]
    third, _ = prune_heads(
        once, PruneHeadsConfig(plan={"heads": {"backbone.stages.2.1.transformer.0.attn": first[1:]}})
    )
    assert read_plan(third)["heads"]["backbone.stages.2.1.transformer.0.attn"]["kept"] == first[1:]
    with pytest.raises(PassError, match="already removed"):
        gone = next(h for h in range(4) if h not in first)
        prune_heads(once, PruneHeadsConfig(plan={"heads": {"backbone.stages.2.1.transformer.0.attn": [gone]}}))


def test_importance_is_the_norm_of_qkv_columns_and_proj_rows() -> None:
    model = mha_model(dim=16, heads=4, tokens=5)
    (block,) = find_attention_blocks(model)
    w = initializer_map(model)
    qkv, proj = w["b0_wqkv"].reshape(16, 3, 4, 4), w["b0_wproj"].reshape(4, 4, 16)
    l1 = np.abs(qkv).sum(axis=(0, 1, 3)) + np.abs(proj).sum(axis=(1, 2))
    l2 = np.sqrt(np.square(qkv).sum(axis=(0, 1, 3)) + np.square(proj).sum(axis=(1, 2)))
    assert np.allclose(head_importance(model, [block], "l1")[block.id], l1)
    assert np.allclose(head_importance(model, [block], "l2")[block.id], l2)
    pruned, report = prune_heads(model, PruneHeadsConfig(keep=2, norm="l1"))
    assert read_plan(pruned)["heads"][block.id]["kept"] == sorted(np.argsort(-l1)[:2].tolist())


def test_a_symbolic_batch_is_cut_and_the_report_has_metadata(tmp_path: Path) -> None:
    """Reshape sizes computed from a symbolic batch (once two skips, "nothing to prune") are rewritten in the
    constant part of the shape (passes._core.dims.symbolic): both blocks lose heads, the file keeps its symbolic
    batch and equals the zeroing oracle at other batches."""
    from passes._core.oracle import plan_oracle

    model = mha_model(blocks=2, dynamic_batch=True)
    out, report = prune_heads(model, PruneHeadsConfig(keep=1))
    assert report.modified and not report.skipped and len(read_plan(out)["heads"]) == 2
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    oracle = plan_oracle(model, read_plan(out))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 16)).astype(np.float32)
        assert np.abs(run_ort(out, x) - run_ort(oracle, x)).max() <= ATOL
    good, rep = prune_heads(mha_model(blocks=2), PruneHeadsConfig(keep=3))
    hist = read_metadata(good)["history"]
    assert hist[-1]["pass"] == "prune_heads" and rep.extra["units"]["graph:Softmax_11"]["params_per_unit"] > 0
    rep.write_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["heads_after"] == 3


# ------------------------------------------------------------------------------------------------------- CLI
def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_cli_prunes_and_writes_report(exported, tmp_path: Path, capsys) -> None:
    src = exported("mobilevit_xxs", size=64, opset=17)
    before = _digest(src)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main([str(src), "-o", str(out), "--ratio", "0.5", "--report", str(rep)]) == 0
    printed = capsys.readouterr().out
    assert "prune_heads: 18 of 36 heads removed in 9 of 9 attention blocks" in printed  # in words
    assert "transformer.2.attn" not in printed  # quiet: a summary
    assert main([str(src), "-o", str(tmp_path / "v.onnx"), "--ratio", "0.5", "-v"]) == 0
    assert "backbone.stages.4.1.transformer.2.attn" in capsys.readouterr().out  # -v: the full table
    assert _digest(src) == before
    data = json.loads(rep.read_text())
    assert data["modified"] and all(r["heads_after"] == 2 for r in data["rows"])
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    (tmp_path / "plan.json").write_text(json.dumps(read_plan(pruned)))
    again = tmp_path / "again.onnx"
    assert main([str(out), "-o", str(again), "--plan", str(tmp_path / "plan.json")]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_cli_nothing_to_prune_on_a_cnn(tmp_path: Path, capsys) -> None:
    src = tmp_path / "cnn.onnx"
    onnx.save(cnn_model(), str(src))
    assert main([str(src), "-o", str(tmp_path / "o.onnx"), "--keep", "1"]) == 1
    assert "nothing to prune: no attention block found" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_default_output_beside_the_input(tmp_path: Path, capsys) -> None:
    src = tmp_path / "mha.onnx"
    onnx.save(mha_model(blocks=2), str(src))
    assert main([str(src), "--keep", "2"]) == 0
    out = tmp_path / "mha.prune_heads.onnx"
    assert f"wrote {out}" in capsys.readouterr().out and out.is_file()
    stamp = out.stat().st_mtime_ns
    assert main([str(src), "--keep", "1"]) == 2  # never replaces a file without --force
    assert "--force" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp
    assert main([str(src), "--keep", "1", "--force"]) == 0
    assert len(read_plan(onnx.load(str(out)))["heads"]["graph:Softmax_11"]["kept"]) == 1


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--keep", "0"], "is not >= 1", 2),
        (["--keep", "5"], "above the 4 heads", 1),
        (["--ratio", "1.0"], "[0, 1)", 2),
        (["--plan", "PLAN_UNKNOWN"], "unknown block", 1),
        (["--plan", "PLAN_RANGE"], "out of range", 1),
        (["--plan", "PLAN_EMPTY"], "at least one", 1),
        (["--plan", "missing.json"], "no such file", 1),
    ],
)
def test_cli_bad_options(tmp_path: Path, capsys, args: list[str], message: str, code: int) -> None:
    src = tmp_path / "mha.onnx"
    onnx.save(mha_model(blocks=2), str(src))
    before = _digest(src)
    plans = {
        "PLAN_UNKNOWN": {"heads": {"blocks.7.attn": [0]}},
        "PLAN_RANGE": {"heads": {"graph:Softmax_11": [0, 4]}},
        "PLAN_EMPTY": {"heads": {"graph:Softmax_11": []}},
    }
    args = [a if a not in plans else str(tmp_path / f"{a}.json") for a in args]
    for name, plan in plans.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(plan))
    out = tmp_path / "o.onnx"
    assert _code(main, [str(src), "-o", str(out), *args]) == code  # 2: usage error, 1: not for this model
    assert message in capsys.readouterr().err
    assert _digest(src) == before and not out.exists()


def test_cli_bad_files_exit_1(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    assert main([str(junk), "-o", str(tmp_path / "o.onnx"), "--keep", "1"]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    src = tmp_path / "mha.onnx"
    onnx.save(mha_model(), str(src))
    before = _digest(src)
    assert main([str(src), "-o", str(src), "--keep", "1"]) == 2  # a usage error
    assert "never overwritten" in capsys.readouterr().err and _digest(src) == before
    # neither --keep, --ratio nor --plan: the default, half of each block's heads
    assert main([str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    assert "prune_heads: 2 of 4 heads removed in 1 of 1 attention blocks" in capsys.readouterr().out
    assert _code(main, [str(tmp_path), "--ratio", "0.5"]) == 2  # a folder given as the model
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_fresh_export_loses_heads_exactly(exported, tmp_path: Path, capsys, exporter: str) -> None:
    """The headline use: export an untrained model, then `python -m passes.prune_heads model.onnx`."""
    src = exported("mobilevit_xxs", size=64, exporter=exporter, fresh=True)
    model = onnx.load(str(src))
    local = tmp_path / "student.onnx"
    local.write_bytes(src.read_bytes())
    assert main([str(local), "--ratio", "0.5"]) == 0
    pruned = onnx.load(str(tmp_path / "student.prune_heads.onnx"))
    blocks = find_attention_blocks(model)
    kept = read_plan(pruned)["heads"]
    assert len(kept) == len(blocks) == 9 and all(len(v["kept"]) == 2 for v in kept.values())
    keep_sets = {b.id: kept[b.id]["kept"] for b in blocks}
    assert oracle_error(model, pruned, blocks, keep_sets, zero_heads) <= 1e-4
