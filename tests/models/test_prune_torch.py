"""The plan round-trip: plans applied in torch against the zeroing oracle, ONNX -> torch rebuilds, bad plans."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _helpers_distill import (
    ATTN,
    BN_TENSORS,
    MLP,
    combined_plan,
    conv_bn_plan,
    heads_plan,
    merge,
    neurons_plan,
    perturb,
)
from onnx import numpy_helper

from exporters.export import ExportOptions, export_torch_model
from fileformat.metadata import read_metadata, write_metadata
from fileformat.plan import merge_plans
from models.prune_torch import PlanError, apply_plan, check_roundtrip, load_onnx_weights, main, student_from_onnx
from models.registry import Segmentor, build_model

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = [(2, 0), (2, 1), (3, 0), (3, 3), (4, 2)]  # (stage, block) of MobileViT-XXS transformers


@pytest.fixture(scope="module")
def base() -> Segmentor:
    """MobileViT-XXS + UPerNet-128 with perturbed weights and BN statistics (no two tensors equal)."""
    torch.manual_seed(0)
    return perturb(build_model("mobilevit_xxs"), seed=3).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _removed(kept: list[int], total: int) -> list[int]:
    return [i for i in range(total) if i not in kept]


def _keep_sets(rng: random.Random, total: int, n: int) -> list[int]:
    return sorted(rng.sample(range(total), n))


# ------------------------------------------------------------------------------------------ zeroing oracle


def test_heads_plan_equals_zeroing_oracle(base: Segmentor, x: torch.Tensor) -> None:
    rng = random.Random(0)
    keep = {ATTN.format(s=s, b=b): _keep_sets(rng, 4, rng.choice([1, 2, 3])) for s, b in BLOCKS}
    pruned = apply_plan(base, heads_plan(keep))
    oracle = copy.deepcopy(base)
    removed_params = 0
    with torch.no_grad():
        for path, kept in keep.items():
            attn = oracle.get_submodule(path)
            hd, dim = attn.head_dim, attn.qkv.in_features
            for h in _removed(kept, 4):
                attn.proj.weight[:, h * hd : (h + 1) * hd] = 0  # the proj columns that read head h
            removed_params += (4 - len(kept)) * hd * (4 * dim + 3)  # qkv rows + bias, proj columns
            new = pruned.get_submodule(path)
            assert (new.num_heads, new.head_dim, new.scale) == (len(kept), hd, attn.scale)
            assert new.qkv.weight.shape == (3 * len(kept) * hd, dim) and new.proj.weight.shape == (dim, len(kept) * hd)
    err = (_run(pruned, x) - _run(oracle, x)).abs().max().item()
    assert err < 1e-5, err
    assert (_run(base, x) - _run(oracle, x)).abs().max().item() > 1e-3  # the cut changes the model
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(base) - n(pruned) == removed_params


def test_neurons_plan_equals_zeroing_oracle(base: Segmentor, x: torch.Tensor) -> None:
    rng = random.Random(1)
    keep = {}
    for s, b in BLOCKS[:3]:
        total = base.get_submodule(MLP.format(s=s, b=b)).fc1.out_features
        keep[MLP.format(s=s, b=b)] = _keep_sets(rng, total, total // 2)
    plan = neurons_plan(keep, {p: base.get_submodule(p).fc1.out_features for p in keep})
    pruned = apply_plan(base, plan)
    oracle = copy.deepcopy(base)
    with torch.no_grad():
        for path, kept in keep.items():
            fc2 = oracle.get_submodule(path).fc2
            fc2.weight[:, _removed(kept, fc2.in_features)] = 0
            assert pruned.get_submodule(path).fc1.out_features == len(kept)
            assert pruned.get_submodule(path).fc2.in_features == len(kept)
    assert (_run(pruned, x) - _run(oracle, x)).abs().max().item() < 1e-5


def test_channels_plans_equal_zeroing_oracle(base: Segmentor, x: torch.Tensor) -> None:
    """Decoder fusion (conv+BN -> classifier), an FPN conv into the fusion concat, a depthwise bottleneck."""
    rng = random.Random(2)
    fus = _keep_sets(rng, 128, 32)
    fpn = _keep_sets(rng, 128, 48)
    mid = _keep_sets(rng, 48, 20)  # stages.1.1: 24 -> 48 (1x1) -> depthwise 3x3 -> 24
    blk = "backbone.stages.1.1"
    plans = [
        conv_bn_plan("decoder.fusion.0", "decoder.fusion.1", fus, {"decoder.classifier.weight": (0, 128)}, 128),
        conv_bn_plan(
            "decoder.fpn_convs.1.0", "decoder.fpn_convs.1.1", fpn, {"decoder.fusion.0.weight": (128, 512)}, 128
        ),
        {
            "channels": {f"{blk}.conv1_1x1.conv": {"kept": mid, "total": 48}},
            "slices": {
                f"{blk}.conv1_1x1.conv.weight": {"0": mid},
                **{f"{blk}.conv1_1x1.bn.{t}": {"0": mid} for t in BN_TENSORS},
                f"{blk}.conv2_kxk.conv.weight": {"0": mid},
                **{f"{blk}.conv2_kxk.bn.{t}": {"0": mid} for t in BN_TENSORS},
                f"{blk}.conv3_1x1.conv.weight": {"1": mid},
            },
        },
    ]
    plan = merge(*plans)
    pruned = apply_plan(base, plan)
    oracle = copy.deepcopy(base)
    with torch.no_grad():
        oracle.decoder.classifier.weight[:, _removed(fus, 128)] = 0
        oracle.decoder.fusion[0].weight[:, [128 + i for i in _removed(fpn, 128)]] = 0
        oracle.get_submodule(f"{blk}.conv3_1x1.conv").weight[:, _removed(mid, 48)] = 0
    assert (_run(pruned, x) - _run(oracle, x)).abs().max().item() < 1e-5
    dw = pruned.get_submodule(f"{blk}.conv2_kxk.conv")
    assert (dw.in_channels, dw.out_channels, dw.groups) == (20, 20, 20)
    assert pruned.decoder.fusion[0].in_channels == 128 * 3 + 48 and pruned.decoder.fusion[1].num_features == 32
    assert pruned.decoder.classifier.in_channels == 32


def test_backbone_output_channels_plan(base: Segmentor, x: torch.Tensor) -> None:
    """The last stage's output cut: the PPM convs and the PPM concat read it; ``backbone.channels`` follows."""
    kept = sorted(random.Random(4).sample(range(80), 40))
    consumers = {f"decoder.ppm.stages.{i}.0.weight": (0, 80) for i in range(4)}
    consumers["decoder.ppm.bottleneck.0.weight"] = (0, 80 + 4 * 128)
    blk = "backbone.stages.4.1.conv_fusion"
    pruned = apply_plan(base, conv_bn_plan(f"{blk}.conv", f"{blk}.bn", kept, consumers, 80))
    oracle = copy.deepcopy(base)
    with torch.no_grad():
        for name in consumers:
            oracle.get_parameter(name)[:, _removed(kept, 80)] = 0
    assert (_run(pruned, x) - _run(oracle, x)).abs().max().item() < 1e-5
    assert pruned.backbone.channels == [24, 48, 64, 40] and base.backbone.channels == [24, 48, 64, 80]


def test_apply_plan_leaves_input_untouched_and_composes(base: Segmentor, x: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in base.state_dict().items()}
    a = ATTN.format(s=3, b=1)
    step1 = heads_plan({a: [0, 1, 3]})
    step2 = heads_plan({a: [0, 2]}, total=3)  # relative to step 1's model: original heads 0 and 3
    merged = merge_plans(merge(step1), step2)
    assert merged["heads"][a]["kept"] == [0, 3]
    direct = apply_plan(base, heads_plan({a: [0, 3]}))
    composed = apply_plan(base, merged)
    assert torch.equal(_run(direct, x), _run(composed, x))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert base.get_submodule(a).num_heads == 4


# ------------------------------------------------------------------------------------------- ONNX round-trip


def _pruned_onnx(base: Segmentor, path: Path, **opts: object) -> tuple[Path, Segmentor, dict]:
    plan = combined_plan()
    pruned = apply_plan(base, plan)
    export_torch_model(
        pruned, path, ExportOptions(model="mobilevit_xxs", input_size=64, **opts), extra_metadata={"plan": plan}
    )
    return path, pruned, plan


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def pruned_legacy(base: Segmentor, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Segmentor, dict]:
    return _pruned_onnx(base, tmp_path_factory.mktemp("rt") / "pruned.onnx", opset=17, exporter="legacy")


def test_student_from_onnx_reproduces_file(pruned_legacy: tuple[Path, Segmentor, dict], x: torch.Tensor) -> None:
    path, pruned, plan = pruned_legacy
    model, got_plan, meta = student_from_onnx(path)
    assert got_plan["heads"] == plan["heads"] and meta["config"]["name"] == "mobilevit_xxs"
    assert not model.training
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model) == n(pruned)
    ref = _ort(path, x[:1].numpy())
    assert np.abs(_run(model, x[:1]).numpy() - ref).max() < 1e-4
    # the legacy exporter folded BN into the convs: the rebuilt BN is the documented identity scheme
    bn = model.decoder.fusion[1]
    assert torch.equal(bn.weight, torch.ones(32)) and torch.equal(bn.running_mean, torch.zeros(32))
    assert torch.equal(bn.running_var, torch.full((32,), 1 - bn.eps))


def test_check_roundtrip_legacy_cli(
    pruned_legacy: tuple[Path, Segmentor, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m models.prune_torch pruned.onnx --json r.json``: exit 0 and a report that says why."""
    assert main([str(pruned_legacy[0]), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["params_onnx"] == report["params_rebuilt"] and report["max_abs_error"] <= 1e-4
    assert (report["heads"], report["neurons"], report["channels"]) == (1, 1, 1) and not report["shape_mismatches"]
    assert "round-trip of" in capsys.readouterr().out


def test_roundtrip_jetson_nano_target(base: Segmentor, tmp_path: Path) -> None:
    """Opset 13, unfused attention, decomposed LayerNorm (the Nano export): the target options survive."""
    path, _, _ = _pruned_onnx(base, tmp_path / "nano.onnx", target="jetson-nano", exporter="legacy")
    report = check_roundtrip(path)
    assert report.ok, report.format()
    meta = read_metadata(onnx.load(str(path)))
    assert meta["opset"] == 13 and meta["fused_attn"] is False


@pytest.mark.slow
def test_roundtrip_dynamo(base: Segmentor, tmp_path: Path, x: torch.Tensor) -> None:
    """The dynamo exporter (torch 2.14 folds BN there too; its Linear weights are transposed as well)."""
    path, _, _ = _pruned_onnx(base, tmp_path / "dyn.onnx", opset=17, exporter="dynamo")
    model, _, _ = student_from_onnx(path)
    assert np.abs(_run(model, x[:1]).numpy() - _ort(path, x[:1].numpy())).max() < 1e-4


def test_load_onnx_weights_unfolded_and_transposed(base: Segmentor) -> None:
    """BatchNorm kept as its own tensors (no fold) and Linear weights stored [in, out] load back exactly."""
    plan = combined_plan()
    src = apply_plan(base, plan)
    inits, wmap = [], {}
    for i, (name, t) in enumerate(list(src.named_parameters()) + list(src.named_buffers())):
        if not t.is_floating_point():
            continue
        transposed = t.ndim == 2
        arr = (t.detach().T if transposed else t.detach()).contiguous().numpy()
        inits.append(numpy_helper.from_array(arr, f"w{i}"))
        wmap[f"w{i}"] = {"param": name, "transposed": transposed, "folded_bn": None}
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=inits))
    fresh = apply_plan(build_model("mobilevit_xxs"), plan)
    summary = load_onnx_weights(fresh, proto, wmap)
    assert not summary.folded_bn and len(summary.loaded) == len(wmap)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), fresh.state_dict().values()))
    # an incomplete map names what is missing
    missing = dict(list(wmap.items())[:-3])
    with pytest.raises(PlanError, match="holds no weight for 3 tensors"):
        load_onnx_weights(apply_plan(build_model("mobilevit_xxs"), plan), proto, missing)


def test_check_roundtrip_reports_a_graph_that_differs(
    pruned_legacy: tuple[Path, Segmentor, dict], tmp_path: Path
) -> None:
    """The same weights behind a graph that computes something else (the logits scaled by 1.5 at the end)."""
    proto = onnx.load(str(pruned_legacy[0]))
    last = next(n for n in proto.graph.node if "logits" in n.output)
    last.output[list(last.output).index("logits")] = "logits_pre"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1.5, dtype=np.float32), "scale_edit"))
    proto.graph.node.append(onnx.helper.make_node("Mul", ["logits_pre", "scale_edit"], ["logits"]))
    bad = tmp_path / "edited.onnx"
    onnx.save(proto, str(bad))
    report = check_roundtrip(bad)
    assert not report.ok and report.max_abs_error > 1e-3 and not report.shape_mismatches


# ---------------------------------------------------------------------------------------------- bad plans


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"slices": {"backbone.nope.weight": {"0": [0]}}}, "not a parameter or buffer"),
        ({"slices": {"decoder.classifier.weight": {"1": [0, 128]}}}, "out of range"),
        ({"slices": {"decoder.classifier.weight": {"1": [1, 1]}}}, "repeat an index"),
        ({"slices": {"decoder.classifier.weight": {"7": [0]}}}, "axis 7 out of range"),
        ({"slices": {"decoder.classifier.weight": {"1": []}}}, "keep at least one"),
        ({"heads": {ATTN.format(s=2, b=0): {"kept": [0], "total": 8}}}, "the model has 4"),
        ({"heads": {ATTN.format(s=2, b=0): {"kept": [4], "total": 4}}}, "out of range"),
        ({"heads": {"decoder.fusion": {"kept": [0], "total": 4}}}, "not a multi-head attention"),
        ({"heads": {"backbone.stages.9.attn": {"kept": [0], "total": 4}}}, "is not a module"),
        (
            {
                "heads": {ATTN.format(s=2, b=0): {"kept": [0, 1], "total": 4}},
                "slices": {ATTN.format(s=2, b=0) + ".proj.weight": {"1": list(range(16, 48))}},
            },
            "inconsistent",
        ),
        ({"slices": {ATTN.format(s=2, b=0) + ".qkv.weight": {"0": list(range(96))}}}, "bias"),
        (
            {
                "slices": {
                    ATTN.format(s=2, b=0) + ".qkv.weight": {"0": list(range(96))},
                    ATTN.format(s=2, b=0) + ".qkv.bias": {"0": list(range(96))},
                }
            },
            "cut whole heads",
        ),
        (
            {
                "slices": {
                    MLP.format(s=2, b=0) + ".fc1.weight": {"0": list(range(64))},
                    MLP.format(s=2, b=0) + ".fc1.bias": {"0": list(range(64))},
                    MLP.format(s=2, b=0) + ".fc2.weight": {"1": list(range(64, 128))},
                }
            },
            "MLP hidden neurons",
        ),
        ({"slices": {"decoder.fusion.1.weight": {"0": [0, 1]}}}, "fusion.1.weight axis 0 keeps 2 indices"),
        ({"slices": {"decoder.fusion.0.weight": {"0": [0, 1]}}}, "decoder.fusion.0 -> decoder.fusion.1"),
        (conv_bn_plan("decoder.fusion.0", "decoder.fusion.1", [0, 1], {}, 128), "does not run"),
        ({"channels": {"decoder.fusion.0": {"kept": [0, 1], "total": 128}}}, "is absent"),
        (
            {
                "slices": {
                    "decoder.classifier.weight": {"0": list(range(10))},
                    "decoder.classifier.bias": {"0": list(range(10))},
                }
            },
            "class logits",
        ),
        ({"slices": {"decoder.fusion.0.weight": {"2": [0]}}}, "spatial"),
        ({"version": 2}, "version"),
        ({"heads": []}, "must be a dict"),
    ],
)
def test_bad_plans_are_clear_errors(base: Segmentor, plan: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        apply_plan(base, plan)


def test_student_from_onnx_bad_files(pruned_legacy: tuple[Path, Segmentor, dict], tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(PlanError, match="not a readable ONNX model"):
        student_from_onnx(junk)
    proto = onnx.load(str(pruned_legacy[0]))
    # the plan in the metadata does not describe the weights in the file
    other = copy.deepcopy(proto)
    write_metadata(other, {"plan": heads_plan({ATTN.format(s=2, b=0): [0, 1, 2]})})
    onnx.save(other, str(tmp_path / "wrong_plan.onnx"))
    with pytest.raises(PlanError, match="does not describe its weights"):
        student_from_onnx(tmp_path / "wrong_plan.onnx")
    # the file's weights and plan, but the configuration recorded as another model
    other = copy.deepcopy(proto)
    config = {**read_metadata(proto)["config"], "name": "mobilevit_xs", "backbone": "mobilevit_xs"}
    write_metadata(other, {"config": config})
    onnx.save(other, str(tmp_path / "wrong_config.onnx"))
    with pytest.raises(PlanError, match="the plan says 160 neurons, the model has 240"):
        student_from_onnx(tmp_path / "wrong_config.onnx")
    # no metadata at all (someone else's export)
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(PlanError, match="no vitseg.config"):
        student_from_onnx(tmp_path / "bare.onnx")
    assert main([str(tmp_path / "bare.onnx")]) == 1


# ----------------------------------------------------------------------------------- against the real passes


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("prune_heads", ["--keep", "2"]),
        ("slice_neurons", ["--ratio", "0.5"]),
        ("slice_channels", ["--scope", "decoder", "--target-flops", "0.5"]),
    ],
)
def test_roundtrip_of_real_pass(name: str, args: list[str], exported: Callable[..., Path], tmp_path: Path) -> None:
    src = exported("mobilevit_xxs", size=64, opset=17)
    out = tmp_path / f"{name}.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", f"passes.{name}", str(src), "-o", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = read_metadata(onnx.load(str(out))).get("plan") or {}
    assert plan.get("slices"), f"passes.{name} wrote no plan slices"
    report = check_roundtrip(out)
    assert report.ok, report.format()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_untrained_export_compresses_and_round_trips(exported, tmp_path: Path, exporter: str) -> None:
    """A fresh export (zero biases and identical folded BatchNorms merged by the exporter) compresses, and the torch
    side rebuilds it exactly."""
    from fileformat.io import save_model
    from passes.compress import CompressConfig, compress

    src = onnx.load(str(exported("mobilevit_xxs", size=64, exporter=exporter, fresh=True)))
    assert len({t.name for t in src.graph.initializer}) < len(
        [i for n in src.graph.node for i in n.input if i in {t.name for t in src.graph.initializer}]
    )  # some initializers are read by several nodes: the exporter merged equal tensors
    out, report = compress(src, CompressConfig(target_flops=0.3))
    plan = read_metadata(out)["plan"]
    assert report.modified and plan["neurons"] and plan["channels"]
    path = tmp_path / "c.onnx"
    save_model(out, path)
    rt = check_roundtrip(path)
    assert rt.ok, rt.format()


# ------------------------------------------------------------------------------------ low-rank factorisations

QKV = ATTN.format(s=2, b=0) + ".qkv"


def test_low_rank_plan_is_the_truncated_svd(base: Segmentor, x: torch.Tensor) -> None:
    """``apply_plan`` alone: a factored Linear / 1x1 conv is ``nn.Sequential`` of two, initialised with the truncated
    SVD of the module's weight (full rank: the same model)."""
    conv = "decoder.classifier"
    full = {"low_rank": {QKV: {"kind": "linear", "in": 64, "out": 192, "rank": 64}}}
    full["low_rank"][conv] = {"kind": "conv", "in": 128, "out": 14, "rank": 14}
    model = apply_plan(base, full)
    seq = model.get_submodule(QKV)
    assert isinstance(seq, torch.nn.Sequential) and seq[0].bias is None and seq[1].bias is not None
    assert (seq[0].in_features, seq[0].out_features, seq[1].out_features) == (64, 64, 192)
    assert isinstance(model.decoder.classifier[1], torch.nn.Conv2d) and model.decoder.classifier[0].out_channels == 14
    assert (_run(model, x) - _run(base, x)).abs().max().item() < 1e-4
    assert isinstance(base.get_submodule(QKV), torch.nn.Linear)  # the input is untouched
    half = apply_plan(base, {"low_rank": {QKV: {"kind": "linear", "in": 64, "out": 192, "rank": 16}}})
    seq = half.get_submodule(QKV)
    w = base.get_submodule(QKV).weight.detach().double()
    s = torch.linalg.svdvals(w)
    err = torch.linalg.norm(w - seq[1].weight.double() @ seq[0].weight.double()) / torch.linalg.norm(w)
    assert abs(err.item() - (s[16:].square().sum() / s.square().sum()).sqrt().item()) < 1e-5


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({QKV: {"kind": "linear", "in": 64, "out": 192}}, "positive integers"),
        ({QKV: {"kind": "svd", "in": 64, "out": 192, "rank": 8}}, "expected"),
        ({QKV: {"kind": "linear", "in": 64, "out": 96, "rank": 8}}, "factored as 64 -> 96"),
        ({QKV: {"kind": "linear", "in": 64, "out": 192, "rank": 65}}, "exceeds"),
        ({QKV: {"kind": "conv", "in": 64, "out": 192, "rank": 8}}, "1x1 conv"),
        ({"decoder.classifier": {"kind": "linear", "in": 128, "out": 14, "rank": 8}}, "module is a Conv2d"),
        ({"backbone.nope": {"kind": "linear", "in": 1, "out": 1, "rank": 1}}, "is not a module"),
    ],
)
def test_bad_low_rank_plans(base: Segmentor, entry: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        apply_plan(base, {"low_rank": entry})


def _low_rank_file(src: onnx.ModelProto, path: Path, **config: object) -> dict:
    from fileformat.io import save_model
    from passes.low_rank import LowRankConfig, low_rank

    out, report = low_rank(src, LowRankConfig(**config))  # type: ignore[arg-type]
    assert report.modified
    save_model(out, path)
    return read_metadata(out)["plan"]


def test_low_rank_roundtrip(exported: Callable[..., Path], tmp_path: Path) -> None:
    """``passes.low_rank --rank-ratio 0.5`` on MobileViT-XXS: the torch side rebuilds the factors exactly."""
    path = tmp_path / "lr.onnx"
    plan = _low_rank_file(onnx.load(str(exported("mobilevit_xxs", size=64))), path, rank_ratio=0.5)
    assert len(plan["low_rank"]) > 40 and not plan["slices"]
    rt = check_roundtrip(path)
    assert rt.ok and rt.low_rank == len(plan["low_rank"]), rt.format()
    model, _, _ = student_from_onnx(path)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    wmap = read_metadata(onnx.load(str(path)))["weight_map"]
    by_param = {s["param"]: n for n, e in wmap.items() for s in [e] if not e.get("alts")}
    for module, entry in plan["low_rank"].items():
        seq = model.get_submodule(module)
        assert isinstance(seq, torch.nn.Sequential) and len(seq) == 2
        first = seq[0].weight.detach().numpy()
        assert first.shape[:2] == (entry["rank"], entry["in"]) and seq[1].weight.shape[:2] == (
            entry["out"],
            entry["rank"],
        )
        stored = inits[by_param[f"{module}.0.weight"]]
        assert np.array_equal(first, stored.T if entry["kind"] == "linear" else stored)


def test_low_rank_after_compress_roundtrip(exported: Callable[..., Path], tmp_path: Path) -> None:
    """compress (heads, neurons, channels), then low_rank: the factored layers have their cut widths, and the
    torch side applies the cuts first, then the factorisations."""
    from passes.compress import CompressConfig, compress

    pruned, _ = compress(onnx.load(str(exported("mobilevit_xxs", size=64))), CompressConfig(target_flops=0.5))
    path = tmp_path / "c_lr.onnx"
    plan = _low_rank_file(pruned, path, rank_ratio=0.5)
    assert plan["neurons"] and plan["slices"] and plan["low_rank"]
    cut = [m for m in plan["neurons"] if f"{m}.fc1" in plan["low_rank"]]
    assert cut, "no MLP both cut and factored"
    for m in cut:
        assert plan["low_rank"][f"{m}.fc1"]["out"] == len(plan["neurons"][m]["kept"])
    rt = check_roundtrip(path)
    assert rt.ok, rt.format()


@pytest.mark.slow
def test_low_rank_roundtrip_dynamo(exported: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "lr_dyn.onnx"
    _low_rank_file(onnx.load(str(exported("mobilevit_xxs", size=64, exporter="dynamo"))), path, rank_ratio=0.25)
    rt = check_roundtrip(path)
    assert rt.ok, rt.format()


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"attn_mask": "random"}])
def test_qk_split_attention_equals_timm_attention_at_equal_sizes(kw: dict) -> None:
    """With q/k as wide as v, the split forward is timm's own, masks included."""
    import copy

    from timm.layers import Attention

    from models.prune_torch import QkSplitAttention

    torch.manual_seed(0)
    plain = Attention(32, num_heads=4).eval()
    plain.fused_attn = False
    split = copy.deepcopy(plain)
    split.__class__ = QkSplitAttention
    split.qk_dim = 8
    if kw.get("attn_mask") == "random":
        kw = {"attn_mask": torch.randn(5, 5)}
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x, **kw), split(x, **kw), atol=1e-6)


@pytest.mark.parametrize("transposed", [False, True])
def test_grouped_convs_are_rebuilt_by_whole_groups(transposed: bool) -> None:
    """A grouped conv (here 4 groups: a channel multiplier of 1 -> 2, or a ConvTranspose of 2 -> 3 per group) cut
    by whole groups, as the passes cut it: the rebuilt module on the kept groups' input channels gives the kept
    groups' output channels of the original exactly; a cut inside the groups is refused."""
    from models.surgery import _resize_module

    torch.manual_seed(0)
    if transposed:
        conv: torch.nn.Module = torch.nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4)
        ci, co, axis0 = 2, 3, 2
    else:
        conv = torch.nn.Conv2d(4, 8, 3, padding=1, groups=4)
        ci, co, axis0 = 1, 2, 2
    groups = [1, 3]
    rows = [g * axis0 + j for g in groups for j in range(axis0)]  # weight axis 0: outputs (Conv) or inputs (ConvT)
    inputs = [g * ci + j for g in groups for j in range(ci)]
    outputs = [g * co + j for g in groups for j in range(co)]
    x = torch.randn(1, 4 * ci, 5, 5)
    with torch.no_grad():
        want = conv(x)[:, outputs]
        cut = copy.deepcopy(conv)
        new = {"weight": conv.weight[rows], "bias": conv.bias[outputs]}
        _resize_module("conv", cut, new, rows)
        got = cut(x[:, inputs])
    assert (cut.groups, cut.in_channels, cut.out_channels) == (2, 2 * ci, 2 * co)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    inside = [0, 2, 4, 6]  # one channel of each group (rows 0, 2, ... of groups of two)
    with pytest.raises(PlanError, match="inside the groups|inside its groups"):
        _resize_module("conv", copy.deepcopy(conv), {"weight": conv.weight[inside]}, inside)
