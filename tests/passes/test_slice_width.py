"""passes.slice_width on the project's MobileViT, all three exports: the width against the torch model built with
the same channels removed (models.prune_torch), the head channels against the zeroing oracle and torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers_prune import input_for, oracle_error, run_ort

from fileformat.errors import PassError
from fileformat.plan import QK_SUFFIX, read_plan
from models.prune_torch import check_roundtrip, student_from_onnx
from passes._core.oracle import zero_units
from passes._core.units import find_head_dims, find_widths
from passes.prune_heads import PruneHeadsConfig, prune_heads
from passes.slice_width import SliceWidthConfig, main, slice_width

# the Jetson Nano's opset 13 through dynamo (whose opset-18 graph is converted down: a q/k-split model's qkv Split
# needs our own adapter) runs here; legacy opset 13 (decomposed LayerNorm) and dynamo at 18 with `make test-zoo`
EXPORTS = [
    pytest.param(13, "legacy", marks=pytest.mark.zoo, id="legacy13"),
    (17, "legacy"),
    (13, "dynamo"),
    pytest.param(18, "dynamo", marks=pytest.mark.zoo, id="dynamo18"),
]


@pytest.mark.parametrize(("opset", "exporter"), EXPORTS)
def test_width_round_trips_to_torch(exported, tmp_path: Path, opset: int, exporter: str) -> None:
    path = exported("mobilevit_xxs", size=64, opset=opset, exporter=exporter)
    model = onnx.load(str(path))
    widths = [u for u in find_widths(model) if u.prunable]
    assert [u.count for u in widths] == [64, 80, 96]  # the three MobileViT blocks' transformer dims
    assert all(u.group.inexact for u in widths)  # type: ignore[union-attr]
    out, report = slice_width(model, SliceWidthConfig(ratio=0.5))
    plan = read_plan(out)
    assert {e["total"]: len(e["kept"]) for e in plan["width"].values()} == {64: 32, 80: 40, 96: 48}
    assert report.params_after < report.params_before
    x = input_for(model)
    assert np.abs(run_ort(out, x) - run_ort(model, x)).max() > 1e-3  # something was removed
    target = tmp_path / "width.onnx"
    onnx.save(out, str(target))
    rt = check_roundtrip(target)
    assert rt.ok, rt.format()
    with pytest.raises(PassError, match="no zeroing oracle"):
        zero_units(model, widths[0], [0])


@pytest.mark.parametrize(("opset", "exporter"), EXPORTS)
def test_head_dim_oracle_and_round_trip(exported, tmp_path: Path, opset: int, exporter: str) -> None:
    path = exported("mobilevit_xxs", size=64, opset=opset, exporter=exporter)
    model = onnx.load(str(path))
    units = find_head_dims(model)
    # timm's fused qkv: the q/k channels of every head are a group apart from the v channels (they meet in the
    # scores, v in the context), so each block has two
    v_ids = [u.id for u in units if not u.id.endswith(QK_SUFFIX)]
    assert len(v_ids) == 9 and sorted(u.id for u in units) == sorted(v_ids + [i + QK_SUFFIX for i in v_ids])
    assert all(u.prunable for u in units) and {u.count for u in units} == {16, 20, 24}  # 4 heads of 64, 80, 96
    count = {u.id: u.count for u in units}
    keep = {u.id: [1, 5, 9, 14] if u.id.endswith(QK_SUFFIX) else list(range(0, u.count, 2)) for u in units}
    out, _ = slice_width(model, SliceWidthConfig(keep_sets=keep, kind="head_dim"))
    assert {uid: e["kept"] for uid, e in read_plan(out)["head_dim"].items()} == keep
    scale = float(np.abs(run_ort(model, input_for(model))).max())
    assert oracle_error(model, out, units, keep, zero_units) <= 1e-4 * scale
    shifted = {uid: [(i + 1) % count[uid] for i in k] for uid, k in keep.items()}
    assert oracle_error(model, out, units, shifted, zero_units) > 1e-2 * scale
    # then whole heads of the cut blocks: the torch side rebuilds all three (q/k channels, v channels and heads;
    # the scale stays that of the original head_dim)
    both, _ = prune_heads(out, PruneHeadsConfig(keep=2))
    plan = read_plan(both)
    assert plan["heads"] and plan["head_dim"]
    target = tmp_path / "both.onnx"
    onnx.save(both, str(target))
    rt = check_roundtrip(target)
    assert rt.ok, rt.format()
    student, _, _ = student_from_onnx(target)
    attn = student.get_submodule(v_ids[0])
    assert (type(attn).__name__, attn.num_heads, attn.qk_dim, attn.head_dim) == ("QkSplitAttention", 2, 4, 8)


def test_a_block_cut_to_one_head_keeps_its_head_channels(exported, tmp_path: Path) -> None:
    """A block left with one head has no head axis to follow; its channels are found from q and v, cut exactly,
    and the torch side rebuilds the result."""
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    first = find_head_dims(model)[0].id
    one, _ = prune_heads(model, PruneHeadsConfig(keep_sets={first: [2]}))
    units = find_head_dims(one)
    assert len(units) == 18 and all(u.prunable for u in units)
    out, _ = slice_width(one, SliceWidthConfig(keep_sets={first: list(range(0, 16, 2))}, kind="head_dim"))
    assert read_plan(out)["head_dim"][first]["total"] == 16
    keep = {first: list(range(0, 16, 2))}
    scale = float(np.abs(run_ort(one, input_for(one))).max())
    assert oracle_error(one, out, units, keep, zero_units) <= 1e-4 * scale
    assert oracle_error(one, out, units, {first: list(range(1, 16, 2))}, zero_units) > 1e-2 * scale
    target = tmp_path / "one_head.onnx"
    onnx.save(out, str(target))
    rt = check_roundtrip(target)
    assert rt.ok, rt.format()


def test_cli_kinds(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")
    out = tmp_path / "w.onnx"
    assert main([str(src), "-o", str(out), "--keep", "30", "--kind", "head_dim"]) == 1
    assert "above the 16 head channels" in capsys.readouterr().err and not out.exists()
    assert main([str(src), "-o", str(out), "--ratio", "0.25"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_plan(onnx.load(str(out)))["width"]
    with pytest.raises(SystemExit) as exc:
        main([str(src), "--ratio", "0.25", "--kind", "depth"])
    assert exc.value.code == 2


def test_a_width_keeps_its_name_when_an_earlier_cut_leaves_one_head(exported) -> None:
    """A file without our weight map (a plain ``torch.onnx.export``) names a width after a graph tensor. Compress
    cuts heads before widths, and a block left with one head no longer seeds the width search: the width must keep
    its name, or the plan's width entry no longer fits (found on transformers' MobileViT, latency budget)."""
    from fileformat.metadata import PREFIX
    from passes._core.prune import UnitPruneConfig, prune_units
    from passes._core.units import find_attention_blocks

    model = onnx.load(str(exported("mobilevit_xxs", size=64)))
    kept_props = [p for p in model.metadata_props if p.key != f"{PREFIX}weight_map"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept_props)
    before = {u.id: u.count for u in find_widths(model) if u.prunable}
    assert len(before) == 3 and all(uid.startswith("graph:") for uid in before)
    one_head = {b.id: [0] for b in find_attention_blocks(model) if b.prunable}
    cut, _ = prune_units(model, "heads", UnitPruneConfig(keep_sets=one_head), "test")
    assert not any(b.prunable for b in find_attention_blocks(cut))
    assert {u.id: u.count for u in find_widths(cut) if u.prunable} == before


def test_a_plan_naming_only_the_block_cuts_its_q_k_and_v_channels(exported) -> None:
    """Plans written before q/k were a group apart from v have one ``head_dim`` entry per block, which meant all
    three; such a plan still cuts all three, and the file's plan then says so with both entries."""
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    blocks = [u for u in find_head_dims(model) if not u.id.endswith(QK_SUFFIX)]
    old = {"head_dim": {u.id: {"kept": list(range(0, u.count, 2)), "total": u.count} for u in blocks}}
    out, _ = slice_width(model, SliceWidthConfig(kind="head_dim", plan=old))
    plan = read_plan(out)["head_dim"]
    assert sorted(plan) == sorted([u.id for u in blocks] + [u.id + QK_SUFFIX for u in blocks])
    assert all(e["kept"] == list(range(0, e["total"], 2)) for e in plan.values())
