"""passes.slice_channels: channel groups, the zeroing oracle, Concat offsets, residual and depthwise groups, plans,
the CLI's bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _helpers_channels import (
    export_cnn,
    image,
    param_initializer,
    run,
    zero_columns,
)
from onnx import numpy_helper

from fileformat.errors import PassError
from fileformat.metadata import read_metadata
from fileformat.plan import read_plan
from passes._core.canonical import canonicalize
from passes._core.channels import in_scope
from passes._core.oracle import zero_kept
from passes._core.stats import graph_stats
from passes._core.units import find_units
from passes.slice_channels import SliceChannelsConfig, main, slice_channels

TOL = 1e-4
WIDTH = 128  # mobilevit_xxs decoder width
# the prunable groups of MobileViT-XXS + UPerNet, named by their first source conv
XXS_GROUPS = {
    "backbone.stem.conv": 16,  # residual with stages.0.0.conv3_1x1
    "backbone.stages.0.0.conv1_1x1.conv": 32,
    "backbone.stages.1.0.conv1_1x1.conv": 32,
    "backbone.stages.1.0.conv3_1x1.conv": 24,  # residual with 1.1 / 1.2
    "backbone.stages.1.1.conv1_1x1.conv": 48,
    "backbone.stages.1.2.conv1_1x1.conv": 48,
    "backbone.stages.2.0.conv1_1x1.conv": 48,
    "backbone.stages.2.0.conv3_1x1.conv": 48,
    "backbone.stages.2.1.conv_kxk.conv": 48,
    "backbone.stages.2.1.conv_proj.conv": 48,
    "backbone.stages.2.1.conv_fusion.conv": 48,
    "backbone.stages.3.0.conv1_1x1.conv": 96,
    "backbone.stages.3.0.conv3_1x1.conv": 64,
    "backbone.stages.3.1.conv_kxk.conv": 64,
    "backbone.stages.3.1.conv_proj.conv": 64,
    "backbone.stages.3.1.conv_fusion.conv": 64,
    "backbone.stages.4.0.conv1_1x1.conv": 128,
    "backbone.stages.4.0.conv3_1x1.conv": 80,
    "backbone.stages.4.1.conv_kxk.conv": 80,
    "backbone.stages.4.1.conv_proj.conv": 80,
    "backbone.stages.4.1.conv_fusion.conv": 80,
    "decoder.lateral_convs.0.0": WIDTH,  # the FPN top-down sums: laterals 0-2 and the PPM bottleneck
    "decoder.ppm.stages.0.0": WIDTH,
    "decoder.ppm.stages.1.0": WIDTH,
    "decoder.ppm.stages.2.0": WIDTH,
    "decoder.ppm.stages.3.0": WIDTH,
    "decoder.fpn_convs.0.0": WIDTH,
    "decoder.fpn_convs.1.0": WIDTH,
    "decoder.fpn_convs.2.0": WIDTH,
    "decoder.fusion.0": WIDTH,
}


def _load(path: Path) -> onnx.ModelProto:
    """The canonical form every pass analyses (shapes computed at run time folded to constants)."""
    return canonicalize(onnx.load(str(path)))


def _random_plan(groups: list, seed: int) -> tuple[dict, dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    plan, keep = {"channels": {}}, {}
    for g in in_scope(groups):
        kept = sorted(rng.choice(g.size, size=int(rng.integers(1, g.size)), replace=False).tolist())
        plan["channels"][g.name] = {"kept": kept, "total": g.size}
        keep[g.id] = kept
    return plan, keep


def _weight(model: onnx.ModelProto, param: str) -> np.ndarray:
    name = param_initializer(model, param)
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 17), ("legacy", 13), ("dynamo", 17), ("dynamo", 13)])
def test_random_cuts_match_zeroing_oracle_on_mobilevit(exported, exporter: str, opset: int) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=opset, exporter=exporter))
    groups = find_units(model, "channels")
    assert {g.name: g.size for g in in_scope(groups)} == XXS_GROUPS
    plan, keep = _random_plan(groups, seed=opset)
    out, report = slice_channels(model, SliceChannelsConfig(plan=plan))
    x = image(64)
    want = run(zero_kept(model, groups, keep), x)
    got = run(out, x)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(run(model, x) - want).max() > 1e-2  # the cut really changed the function
    assert report.modified and report.params_after < report.params_before
    assert graph_stats(out).flops == report.flops_after < report.flops_before
    assert read_plan(out)["channels"]["decoder.fusion.0"]["kept"] == plan["channels"]["decoder.fusion.0"]["kept"]


def test_fusion_and_pyramid_concat_offsets_against_hand_oracle(exported) -> None:
    """Cut the 2nd FPN level (fusion concat offset WIDTH) and the 3rd pooling branch (PPM concat offset
    C_last + 2 * WIDTH); the oracle zeroes the matching input columns of the fusion / bottleneck convs by hand."""
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    rng = np.random.default_rng(5)
    kept_fpn = sorted(rng.choice(WIDTH, 40, replace=False).tolist())
    kept_ppm = sorted(rng.choice(WIDTH, 70, replace=False).tolist())
    plan = {
        "channels": {
            "decoder.fpn_convs.1.0": {"kept": kept_fpn, "total": WIDTH},
            "decoder.ppm.stages.2.0": {"kept": kept_ppm, "total": WIDTH},
        }
    }
    out, _ = slice_channels(model, SliceChannelsConfig(plan=plan))
    c_last = 80  # mobilevit_xxs's last stage width
    removed_fpn = [WIDTH + c for c in range(WIDTH) if c not in kept_fpn]
    removed_ppm = [c_last + 2 * WIDTH + c for c in range(WIDTH) if c not in kept_ppm]
    oracle = zero_columns(
        model,
        {
            param_initializer(model, "decoder.fusion.0.weight"): [(1, removed_fpn)],
            param_initializer(model, "decoder.ppm.bottleneck.0.weight"): [(1, removed_ppm)],
        },
    )
    x = image(64, seed=3)
    assert np.abs(run(out, x) - run(oracle, x)).max() <= TOL
    assert _weight(out, "decoder.fusion.0.weight").shape == (WIDTH, 4 * WIDTH - (WIDTH - 40), 3, 3)
    slices = read_plan(out)["slices"]
    assert slices["decoder.fpn_convs.1.0.weight"] == {"0": kept_fpn}
    assert slices["decoder.fpn_convs.1.1.running_var"] == {"0": kept_fpn}  # BN folded by the exporter
    assert slices["decoder.fusion.0.weight"]["1"] == [i for i in range(4 * WIDTH) if i not in removed_fpn]


def test_residual_group_is_cut_together(exported) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    kept = [0, 3, 5, 6, 11, 17, 23]
    plan = {"channels": {"backbone.stages.1.1.conv3_1x1.conv": {"kept": kept, "total": 24}}}
    out, report = slice_channels(model, SliceChannelsConfig(plan=plan))
    for block in (0, 1, 2):  # every producer of the residual sum loses the same channels
        assert _weight(out, f"backbone.stages.1.{block}.conv3_1x1.conv.weight").shape[0] == len(kept)
    removed = [c for c in range(24) if c not in kept]
    consumers = [
        "backbone.stages.1.1.conv1_1x1.conv.weight",
        "backbone.stages.1.2.conv1_1x1.conv.weight",
        "backbone.stages.2.0.conv1_1x1.conv.weight",
        "decoder.lateral_convs.0.0.weight",
    ]
    oracle = zero_columns(model, {param_initializer(model, p): [(1, removed)] for p in consumers})
    x = image(64, seed=4)
    assert np.abs(run(out, x) - run(oracle, x)).max() <= TOL
    assert report.rows[0]["kind"] == "residual"
    bad = {
        "channels": {
            "backbone.stages.1.0.conv3_1x1.conv": {"kept": kept, "total": 24},
            "backbone.stages.1.2.conv3_1x1.conv": {"kept": kept[1:], "total": 24},
        }
    }
    with pytest.raises(PassError, match="residual sum"):
        slice_channels(model, SliceChannelsConfig(plan=bad))


def test_depthwise_conv_goes_with_its_channels(exported) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="dynamo"))
    kept = list(range(0, 32, 3))
    plan = {"channels": {"backbone.stages.0.0.conv1_1x1.conv": {"kept": kept, "total": 32}}}
    out, _ = slice_channels(model, SliceChannelsConfig(plan=plan))
    dw = next(n for n in out.graph.node if n.op_type == "Conv" and n.input[1].startswith("backbone.stages.0.0.conv2"))
    assert next(a.i for a in dw.attribute if a.name == "group") == len(kept)
    assert _weight(out, "backbone.stages.0.0.conv2_kxk.conv.weight").shape == (len(kept), 1, 3, 3)
    assert read_plan(out)["channels"]["backbone.stages.0.0.conv2_kxk.conv"] == {"kept": kept, "total": 32}
    removed = [c for c in range(32) if c not in kept]
    oracle = zero_columns(
        model, {param_initializer(model, "backbone.stages.0.0.conv3_1x1.conv.weight"): [(1, removed)]}
    )
    x = image(64, seed=6)
    assert np.abs(run(out, x) - run(oracle, x)).max() <= TOL


def test_unfollowable_groups_are_skipped_with_reasons(exported) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    _, report = slice_channels(model, SliceChannelsConfig(ratio=0.5))
    skipped = {s.where: s.reason for s in report.skipped}
    assert set(skipped) == {
        "backbone.stages.2.1.conv_1x1",
        "backbone.stages.3.1.conv_1x1",
        "backbone.stages.4.1.conv_1x1",
        "decoder.classifier",
    }
    # followed through the unfold into the transformer, where LayerNorm normalises over it: a width, not channels
    assert "LayerNormalization" in skipped["backbone.stages.3.1.conv_1x1"]
    assert "slice_width --kind width" in skipped["backbone.stages.3.1.conv_1x1"]
    assert "model output" in skipped["decoder.classifier"]
    plan = {"channels": {"backbone.stages.3.1.conv_1x1": {"kept": [0, 1], "total": 80}}}
    with pytest.raises(PassError, match="cannot be cut"):
        slice_channels(model, SliceChannelsConfig(plan=plan))


def test_ratio_and_scope(exported) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    out, report = slice_channels(model, SliceChannelsConfig(ratio=0.25, scope="decoder"))
    assert {r["layer"].split(" ")[0] for r in report.rows} == {k for k in XXS_GROUPS if k.startswith("decoder.")}
    assert all(r["kept"] == 96 for r in report.rows)  # 128 - floor(0.25 * 128)
    assert _weight(out, "decoder.fusion.0.weight").shape == (96, 4 * 96, 3, 3)
    assert _weight(out, "backbone.stem.conv.weight").shape[0] == 16  # the backbone is untouched
    assert _weight(out, "decoder.classifier.weight").shape == (14, 96, 1, 1)  # outputs never cut
    _, report_b = slice_channels(model, SliceChannelsConfig(ratio=0.25, scope="backbone"))
    assert {r["scope"] for r in report_b.rows} == {"backbone"}


def test_keep_all_leaves_the_model_unchanged(exported) -> None:
    model = _load(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    out, report = slice_channels(model, SliceChannelsConfig(ratio=0.0))
    assert not report.modified
    assert out.SerializeToString() == model.SerializeToString()
    groups = in_scope(find_units(model, "channels"))
    full = {"channels": {g.name: {"kept": list(range(g.size)), "total": g.size} for g in groups}}
    out2, report2 = slice_channels(model, SliceChannelsConfig(plan=full))
    assert not report2.modified and out2.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("fold_bn", [True, False])
def test_cnn_classifier_with_flatten_gemm_head(fold_bn: bool) -> None:
    model, net = export_cnn(fold_bn)
    found = find_units(model, "channels")
    groups = {g.name: g for g in found}
    assert {n for n, g in groups.items() if g.prunable} == {"stem.0", "expand.0", "stage2.0", "fc1"}
    assert groups["stem.0"].layers == ["stem.0", "project.0"]  # the residual sum
    plan, keep = _random_plan(found, seed=11)
    out, _ = slice_channels(model, SliceChannelsConfig(plan=plan))
    x = image(16, seed=2)
    assert np.abs(run(out, x) - run(zero_kept(model, found, keep), x)).max() <= 1e-5
    kept_stage2 = plan["channels"]["stage2.0"]["kept"]
    fc1 = _weight(out, "fc1.weight")  # Gemm transB=1: [out, in]; channel c owns features 4c .. 4c + 3
    assert fc1.shape == (len(plan["channels"]["fc1"]["kept"]), 4 * len(kept_stage2))
    slices = read_plan(out)["slices"]
    assert slices["fc1.weight"]["1"] == [4 * c + j for c in kept_stage2 for j in range(4)]
    assert slices["stage2.1.weight"] == {"0": kept_stage2}  # BN (folded or not) follows its conv
    state = net.state_dict()  # every slice names a real torch tensor and fits it
    for param, axes in slices.items():
        for axis, idx in axes.items():
            assert max(idx) < state[param].shape[int(axis)]


def test_bn_scale_importance() -> None:
    model, net = export_cnn(fold_bn=False)
    out, report = slice_channels(model, SliceChannelsConfig(ratio=0.5, importance="bn_scale", scope="all"))
    gamma = net.stage2[1].weight.detach().abs().numpy()
    want = sorted(np.argsort(-gamma, kind="stable")[:12].tolist())
    assert read_plan(out)["channels"]["stage2.0"]["kept"] == want
    assert any("fc1" in n and "bn_scale" in n for n in report.notes)  # fc1 has no BN: l2 fallback, said so
    folded, _ = export_cnn(fold_bn=True)
    _, report_f = slice_channels(folded, SliceChannelsConfig(ratio=0.5, importance="bn_scale"))
    assert any("folded BN" in n for n in report_f.notes)


def test_plan_from_one_exporter_applies_to_the_other(exported, tmp_path: Path) -> None:
    legacy = exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")
    dynamo = exported("mobilevit_xxs", size=64, opset=17, exporter="dynamo")
    out_l = tmp_path / "l.onnx"
    assert main([str(legacy), "-o", str(out_l), "--target-flops", "0.3"]) == 0
    out_d = tmp_path / "d.onnx"
    assert main([str(dynamo), "-o", str(out_d), "--plan", str(out_l)]) == 0
    a, b = _load(out_l), _load(out_d)
    assert read_plan(a)["channels"] == read_plan(b)["channels"]
    x = image(64, seed=9)
    assert np.abs(run(a, x) - run(b, x)).max() <= TOL
    assert graph_stats(a).flops == graph_stats(b).flops


def test_cli_bad_inputs(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    out = str(tmp_path / "o.onnx")
    cases = [
        (["--ratio", "1.0"], "is not in [0, 1)"),  # refused when parsed
        (["--ratio", "-0.2"], "is not in [0, 1)"),
        (["--target-flops", "0"], "is not in (0, 1]"),
        (["--target-params", "1.5"], "is not in (0, 1]"),
        (["--ratio", "0.5", "--target-flops", "0.5"], "give exactly one of"),
    ]
    for extra, message in cases:
        try:
            code = main([src, "-o", out, *extra])
        except SystemExit as exc:
            code = exc.code
        assert code == 2, extra  # usage errors
        assert message in capsys.readouterr().err
    plans = [
        ({"channels": {"decoder.fusion.0": {"kept": [0, 1], "total": 64}}}, "has 128 channels here"),
        ({"channels": {"decoder.nonexistent": {"kept": [0], "total": 8}}}, "plan/model mismatch"),
        ({"channels": {"decoder.fusion.0": {"kept": [0, 128], "total": 128}}}, "distinct channel indices"),
        ({"heads": {}}, "no 'channels' entries"),
    ]
    for plan, message in plans:
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(plan))
        assert main([src, "-o", out, "--plan", str(path)]) == 1
        assert message in capsys.readouterr().err
    assert main([src, "-o", src, "--ratio", "0.5"]) == 2  # never overwrite the input: a usage error
    assert not Path(out).exists()
    with pytest.raises(SystemExit) as exc:
        main([src, "-o", out, "--scope", "middle", "--ratio", "0.5"])
    assert exc.value.code == 2


def test_cli_writes_model_report_and_history(exported, tmp_path: Path) -> None:
    src = str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main([src, "-o", str(out), "--ratio", "0.5", "--report", str(rep)]) == 0
    data = json.loads(rep.read_text())
    assert data["pass_name"] == "slice_channels" and data["modified"]
    assert len(data["rows"]) == len(XXS_GROUPS)
    meta = read_metadata(_load(out))
    assert meta["history"][-1]["pass"] == "slice_channels"
    assert set(meta["weight_map"]) <= {i.name for i in _load(out).graph.initializer}


class _CatNet(torch.nn.Module):
    """Two convs of unequal widths (8 and 12, one through InstanceNorm) concatenated, plus a third conv's 20
    channels (a residual sum across the concatenation), max-pooled, fused by a 1x1 conv, upsampled, and read by the
    output conv. ``e_first``: the added conv comes first in the graph, so its own trace meets the concatenation from
    its output, across both parts, and stops; the groups of the concatenated convs then take it over."""

    def __init__(self, e_first: bool = False) -> None:
        super().__init__()
        self.e_first = e_first
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 12, 1)
        self.norm = torch.nn.InstanceNorm2d(12, affine=True)
        self.e = torch.nn.Conv2d(3, 20, 1)
        self.c = torch.nn.Conv2d(20, 6, 1)
        self.d = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.e(x) if self.e_first else None
        y = torch.cat([torch.relu(self.a(x)), self.norm(self.b(x))], 1)
        y = y + (r if r is not None else self.e(x))
        y = torch.nn.functional.max_pool2d(y, 2)
        y = torch.nn.functional.interpolate(self.c(y), size=(16, 16), mode="bilinear")  # a sizes vector
        return self.d(torch.nn.functional.adaptive_avg_pool2d(y, 4))


@pytest.mark.parametrize(("exporter", "e_first"), [("legacy", False), ("dynamo", False), ("legacy", True)])
def test_unequal_concat_pool_resize_instance_norm(exporter: str, e_first: bool, tmp_path: Path) -> None:
    """Each input of a Concat is its own group, cut on its own part of the fusion conv's input (a Parts layout of
    8 + 12 channels); the conv added to the concatenation holds both parts, its first 8 outputs in one group and the
    other 12 in the other. MaxPool, Resize (its sizes vector's channel entry follows the cut), InstanceNorm and
    global pooling carry the channels. Exact against zeroing, and a shifted choice of channels is not."""
    from _shared import perturb_
    from _zoo import export

    torch.manual_seed(0)
    net = perturb_(_CatNet(e_first), 0).eval()
    model = canonicalize(onnx.load(str(export(net, (1, 3, 16, 16), tmp_path / "cat.onnx", exporter, 17))))
    found = find_units(model, "channels")
    prunable = in_scope(found)
    sizes = {g.size for g in prunable}
    assert len(found) == 4 and not found[-1].prunable  # d reaches the output
    assert len(prunable) == 3 and sizes == {8, 12, 6}, [(g.name, g.skip_reason) for g in found]
    assert sorted(len(g.layers) for g in prunable) == [1, 2, 2]  # a and e, b and e, c
    out, report = slice_channels(model, SliceChannelsConfig(ratio=0.5))
    channels = read_plan(out)["channels"]
    keep = {g.id: channels[g.name]["kept"] for g in prunable}
    assert sorted(len(k) for k in keep.values()) == [3, 4, 6]
    a, b = (next(g for g in prunable if g.size == n) for n in (8, 12))
    (e,) = set(a.layers) & set(b.layers)  # its kept outputs: a's channels, then b's after the first 8
    assert channels[e] == {"kept": keep[a.id] + [8 + c for c in keep[b.id]], "total": 20}
    fusion = next(w for w in (numpy_helper.to_array(t) for t in out.graph.initializer) if w.shape[:2] == (3, 10))
    assert fusion.shape == (3, 10, 1, 1)  # 4 + 6 of its 8 + 12 input channels, 3 of its 6 outputs
    x = image(16, seed=3)
    want = run(zero_kept(model, found, keep), x)
    assert np.abs(run(out, x) - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
    size = {g.id: g.size for g in found}
    shifted = {uid: [(k + 1) % size[uid] for k in kept] for uid, kept in keep.items()}
    assert np.abs(run(out, x) - run(zero_kept(model, found, shifted), x)).max() > 1e-3
