"""The structural passes on a zoo of external models (timm, torchvision, transformers, a CNN), as users export them.

Every case is model x export (legacy opset 13/17, dynamo saved as one file) x weights (fresh init / perturbed):

* prune_heads and slice_neurons at ratio 0.5 must remove units where the model has them and equal the zeroing
  oracle (the unpruned model with the removed units' consuming weights zeroed) to 1e-4 of the output's scale,
  while zeroing other units (the kept sets shifted by one) must not match;
* every attention block with two or more heads and every MLP must be found and followed (none skipped), except
  where the model's entry says a kind is refused (``ZooModel.refused``): then every unit of it is refused, each with
  that reason;
* slice_width cuts half the head channels of every attention block, exactly (the zeroing oracle), and half of
  every transformer width the model has; LayerNorm statistics change, so a width has no zeroing oracle: timm's
  ViT and Swin are compared with the torch model built narrower (the project's models:
  tests/passes/test_slice_width.py); a width that reaches the model output is refused;
* slice_channels (ratio 0.5) and compress (half the FLOPs, every kind but the width) must run, cut where the model
  has conv channels, and give a model that onnxruntime runs with the original output shape; both also equal their
  zeroing oracles.

The default run (``make test``) takes the small models; ``make test-zoo`` runs the rest (marker ``zoo``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _helpers_prune import input_for, oracle_error, run_ort
from _shared import shared_dir
from _zoo import EXPORTS, MODELS, VARIANTS, exported
from test_compress import EXACT, _combined_oracle

from fileformat.errors import PassError
from fileformat.plan import QK_SUFFIX, read_plan
from passes._core.oracle import zero_kept, zero_units
from passes._core.units import find_head_dims, find_units, find_widths
from passes.compress import CompressConfig, compress
from passes.prune_heads import PruneHeadsConfig, find_attention_blocks, prune_heads, zero_heads
from passes.slice_channels import SliceChannelsConfig, slice_channels
from passes.slice_neurons import SliceNeuronsConfig, find_mlps, slice_neurons, zero_neurons
from passes.slice_width import SliceWidthConfig, slice_width

RTOL = 1e-4  # max abs difference over the reference output's max abs
# transformer widths slice_width can cut (tv_vit's identity head makes its width the model output; the transformers
# models concatenate one stage's width with other channels, which keeps that stage whole)
WIDTHS = {"timm_vit": 1, "tv_vit": 0, "timm_swin": 2, "timm_mobilevit": 3, "tiny_cnn": 0, "hf_mobilevit": 3,
          "hf_segformer": 4, "timm_swinv2": 2, "timm_pvt_v2": 4, "timm_levit": 3, "tv_swinv2": 2, "tv_maxvit": 4,
          "timm_coat_lite": 4, "timm_convit": 1, "timm_mobilevitv2": 4, "timm_beit": 1, "hf_swinv2": 2,
          "hf_beit_seg": 0}  # fmt: skip
# widths an export form stops: SwinV2-CR's last stage reaches the classifier through the head's global pooling,
# which dynamo writes as an as_strided Gather along the width (torchvision's and transformers' Swin-V2: both stages,
# the first through the patch merging into the last)
WIDTHS_STOPPED = {("timm_swinv2", "dynamo"): 1, ("tv_swinv2", "dynamo"): 1, ("hf_swinv2", "dynamo"): 1}
CONTROL = 100 * RTOL  # zeroing other units must differ by at least this much

# The default run: small models, the default legacy export and the dynamo file, both weight variants. The rest
# (opset 13, MobileViT, transformers) is marked zoo and runs with `make test-zoo`.
DEFAULT = {
    (model, export_id)
    for model in ("timm_vit", "tv_vit", "timm_swin", "tiny_cnn")
    for export_id in ("legacy17", "dynamo18")
}


def cases(check: str) -> list:
    out = []
    for model, spec in MODELS.items():
        for export_id in EXPORTS:
            for variant in VARIANTS:
                marks = []
                if (model, export_id) not in DEFAULT:
                    marks.append(pytest.mark.zoo)
                skip = spec.export_skip(export_id)
                if skip:
                    marks.append(pytest.mark.skip(reason=f"torch cannot export it: {skip}"))
                out.append(pytest.param(model, export_id, variant, marks=marks, id=f"{model}-{export_id}-{variant}"))
    return out


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_dir(tmp_path_factory, "zoo")  # exported once for both workers


def _load(root: Path, model: str, export_id: str, variant: str) -> onnx.ModelProto:
    requires = MODELS[model].requires
    if requires:
        pytest.importorskip(requires)
    return exported(root, model, export_id, variant)[0]


def _check_oracle(model: onnx.ModelProto, pruned: onnx.ModelProto, units: list, keep: dict, zero) -> None:
    """``pruned`` equals ``model`` with the removed units zeroed; zeroing the kept sets shifted by one does not."""
    scale = float(np.abs(run_ort(model, input_for(model))).max())
    assert scale > 0, "the model's output is all zeros: the oracle would prove nothing"
    err = oracle_error(model, pruned, units, keep, zero) / scale
    assert err <= RTOL, f"pruned model != zeroing oracle: relative error {err:.3g}"
    count = {u.id: u.count for u in units}
    shifted = {uid: sorted((i + 1) % count[uid] for i in kept) for uid, kept in keep.items()}
    control = oracle_error(model, pruned, units, shifted, zero) / scale
    assert control >= CONTROL, f"the shifted control matches too (relative {control:.3g}): the oracle is blind"


def _check_refused(model: str, kind: str, units: list) -> None:
    """No unit of ``kind`` is skipped; or, where the zoo says the kind is refused, every one is, with its reason."""
    skipped = [f"{u.id}: {u.skip_reason}" for u in units if not u.prunable]
    why = MODELS[model].refusal(kind)
    if why is None:
        assert not skipped, f"{len(skipped)} of {len(units)} {kind} units skipped; first: {skipped[0]}"
        return
    assert units and len(skipped) == len(units), f"{kind}: {len(units) - len(skipped)} cut where all are refused"
    wrong = [s for s in skipped if why not in s]
    assert not wrong, f"{kind} refused for another reason than {why!r}: {wrong[0]}"


def _check_runs(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    x = input_for(model)
    want, got = run_ort(model, x), run_ort(out, x)
    assert got.shape == want.shape, f"output shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all()


# ------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("model", "export_id", "variant"), cases("found"))
def test_units_are_found(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    """Every attention block of two or more heads and every MLP is found and can be pruned (none skipped), or every
    block is refused with the reason the zoo states."""
    proto = _load(zoo_root, model, export_id, variant)
    blocks = [b for b in find_attention_blocks(proto) if b.count != 1]
    _check_refused(model, "heads", blocks)
    assert len(blocks) == MODELS[model].heads
    mlps = find_mlps(proto)
    skipped = [f"{m.id}: {m.skip_reason}" for m in mlps if not m.prunable]
    assert not skipped, f"{len(skipped)} of {len(mlps)} MLPs skipped; first: {skipped[0]}"
    assert len(mlps) == MODELS[model].mlps


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("prune_heads"))
def test_prune_heads(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    pruned, report = prune_heads(proto, PruneHeadsConfig(ratio=0.5))
    if not MODELS[model].heads or MODELS[model].refusal("heads"):
        assert not report.modified
        return
    plan = read_plan(pruned)["heads"]
    assert report.modified and plan, f"no attention block pruned; skipped: {report.skipped}"
    keep = {uid: entry["kept"] for uid, entry in plan.items()}
    _check_oracle(proto, pruned, find_attention_blocks(proto), keep, zero_heads)


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("slice_neurons"))
def test_slice_neurons(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    pruned, report = slice_neurons(proto, SliceNeuronsConfig(ratio=0.5))
    if not MODELS[model].mlps:
        assert not report.modified
        return
    plan = read_plan(pruned)["neurons"]
    assert report.modified and plan, f"no MLP sliced; skipped: {report.skipped}"
    keep = {uid: entry["kept"] for uid, entry in plan.items()}
    _check_oracle(proto, pruned, find_mlps(proto), keep, zero_neurons)


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("slice_channels"))
def test_slice_channels(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    out, report = slice_channels(proto, SliceChannelsConfig(ratio=0.5))
    if MODELS[model].channels:
        assert report.modified and report.flops_after < report.flops_before, f"nothing cut: {report.skipped}"
    _check_runs(proto, out)
    if report.modified:  # the oracle: the consumers' input channels of the removed channels zeroed
        groups = find_units(proto, "channels")
        names = {g.id for g in groups}
        keep = {name: e["kept"] for name, e in read_plan(out)["channels"].items() if name in names}
        x = input_for(proto)
        want = run_ort(zero_kept(proto, groups, keep), x)
        err = float(np.abs(run_ort(out, x) - want).max()) / float(np.abs(want).max())
        assert err <= RTOL, f"cut model != zeroing oracle: relative error {err:.3g}"


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("compress"))
def test_compress(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    out, report = compress(proto, CompressConfig(target_flops=0.5, units=EXACT))
    assert report.modified and report.flops_after < report.flops_before, f"nothing removed: {report.skipped}"
    _check_runs(proto, out)
    x = input_for(proto)
    want = run_ort(_combined_oracle(proto, read_plan(out)), x)
    err = float(np.abs(run_ort(out, x) - want).max()) / float(np.abs(want).max())
    assert err <= RTOL, f"compressed model != zeroing oracle: relative error {err:.3g}"


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("head_dim"))
def test_head_dim(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    units = find_head_dims(proto)
    _check_refused(model, "head_dim", units)
    spec = MODELS[model]
    if spec.head_dims is not None:
        assert sum(u.prunable for u in units) == spec.head_dims
    pruned, report = slice_width(proto, SliceWidthConfig(ratio=0.5, kind="head_dim"))
    if not (spec.heads or spec.head_dims) or spec.refusal("head_dim"):
        assert not report.modified
        return
    plan = read_plan(pruned)["head_dim"]
    assert report.modified and plan, f"no head channels cut; skipped: {report.skipped}"
    keep = {uid: entry["kept"] for uid, entry in plan.items()}
    _check_oracle(proto, pruned, units, keep, zero_units)


@pytest.mark.zoo
@pytest.mark.parametrize("model", list(MODELS))
def test_head_channel_groups_do_not_depend_on_the_exporter(zoo_root: Path, model: str) -> None:
    """Every attention block of two or more heads yields its head-channel groups, found or listed with a reason,
    and as many q/k groups (apart from v) and v groups on every export of the model."""
    counts = {}
    for export_id in EXPORTS:
        if MODELS[model].export_skip(export_id):
            continue
        proto = _load(zoo_root, model, export_id, "perturbed")
        units = find_head_dims(proto)
        blocks = [b for b in find_attention_blocks(proto) if b.count > 1]
        listed = {u.id.removesuffix(QK_SUFFIX) for u in units}
        assert {b.id for b in blocks} <= listed, f"{export_id}: blocks without head-channel groups"
        counts[export_id] = (
            sum(u.prunable and u.id.endswith(QK_SUFFIX) for u in units),
            sum(u.prunable and not u.id.endswith(QK_SUFFIX) for u in units),
        )
    assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("width"))
def test_width(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    found = find_widths(proto)
    widths = [u for u in found if u.prunable]
    want = WIDTHS[model] - WIDTHS_STOPPED.get((model, EXPORTS[export_id][0]), 0)
    assert len(widths) == want, [u.skip_reason for u in found]
    if MODELS[model].refusal("width"):
        _check_refused(model, "width", found)
    out, report = slice_width(proto, SliceWidthConfig(ratio=0.5, kind="width"))
    assert report.modified == bool(want)
    if report.modified:
        assert len(read_plan(out)["width"]) == want
        assert report.params_after < report.params_before
        _check_runs(proto, out)
        if any(u.group.inexact for u in widths):  # LayerNorm over the width: the torch model built narrower instead
            with pytest.raises(PassError, match="no zeroing oracle"):
                zero_units(proto, next(u for u in widths if u.group.inexact), [0])
        else:  # BatchNorm only (LeViT): a width is exact against zeroing
            keep = {uid: entry["kept"] for uid, entry in read_plan(out)["width"].items()}
            _check_oracle(proto, out, widths, keep, zero_units)


# timm ViT's width in torch terms: (parameter, axis) of every tensor that carries the embedding dimension
_VIT_WIDTH = {
    "cls_token": 2, "pos_embed": 2, "patch_embed.proj.weight": 0, "patch_embed.proj.bias": 0, "norm.weight": 0,
    "norm.bias": 0, "head.weight": 1, "norm1.weight": 0, "norm1.bias": 0, "norm2.weight": 0, "norm2.bias": 0,
    "attn.qkv.weight": 1, "attn.proj.weight": 0, "attn.proj.bias": 0, "mlp.fc1.weight": 1, "mlp.fc2.weight": 0,
    "mlp.fc2.bias": 0,
}  # fmt: skip


@pytest.mark.parametrize("export_id", ["legacy17", "dynamo18"])
def test_vit_width_equals_the_torch_model_built_narrower(zoo_root: Path, export_id: str) -> None:
    """The independent oracle of a width cut: timm's ViT with the same channels removed from every tensor and every
    LayerNorm built for the kept width (LayerNorm statistics over the kept channels) gives the cut file's output."""
    from _zoo import build, example_input

    proto = _load(zoo_root, "timm_vit", export_id, "perturbed")
    out, _ = slice_width(proto, SliceWidthConfig(ratio=0.5, kind="width"))
    (kept,) = [e["kept"] for e in read_plan(out)["width"].values()]
    net, shape = build("timm_vit", "perturbed")
    _narrower(net, {suffix: (axis, kept) for suffix, axis in _VIT_WIDTH.items()})
    with torch.no_grad():
        want = net(example_input(shape)).numpy()
    got = run_ort(out, example_input(shape).numpy())
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= RTOL * scale
    assert float(np.abs(run_ort(proto, example_input(shape).numpy()) - want).max()) > 100 * RTOL * scale


def _narrower(net: torch.nn.Module, axes: dict[str, tuple[int, list[int]]]) -> None:
    """In place: keep ``indices`` on ``axis`` of every parameter named (by suffix) in ``axes``; LayerNorms follow."""
    with torch.no_grad():
        for name, p in list(net.named_parameters()):
            hit = next((v for suffix, v in axes.items() if name == suffix or name.endswith("." + suffix)), None)
            if hit is not None:
                p.data = p.data.index_select(hit[0], torch.tensor(hit[1])).contiguous()
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.normalized_shape = (int(m.weight.shape[0]),)


@pytest.mark.parametrize("export_id", ["legacy17", "dynamo18"])
def test_swin_widths_equal_the_torch_model_built_narrower(zoo_root: Path, export_id: str) -> None:
    """Both stages' widths of timm's Swin cut at once, against the torch model built narrower: the patch merging's
    LayerNorm and reduction rows hold four copies of stage 0's channels, its columns stage 1's."""
    from _zoo import build, example_input

    proto = _load(zoo_root, "timm_swin", export_id, "perturbed")
    out, _ = slice_width(proto, SliceWidthConfig(ratio=0.5, kind="width"))
    kept = {e["total"]: e["kept"] for e in read_plan(out)["width"].values()}
    k0, k1 = kept[32], kept[64]
    merged = [part * 32 + c for part in range(4) for c in k0]
    axes = {
        "patch_embed.proj.weight": (0, k0), "patch_embed.proj.bias": (0, k0), "patch_embed.norm.weight": (0, k0),
        "patch_embed.norm.bias": (0, k0), "layers.1.downsample.norm.weight": (0, merged),
        "layers.1.downsample.norm.bias": (0, merged), "norm.weight": (0, k1), "norm.bias": (0, k1),
        "head.fc.weight": (1, k1),
    }  # fmt: skip
    for stage, k in ((0, k0), (1, k1)):
        for block in (0, 1):
            pre = f"layers.{stage}.blocks.{block}."
            for suffix, axis in _VIT_WIDTH.items():
                if suffix.startswith(("norm1", "norm2", "attn.", "mlp.")):
                    axes[pre + suffix] = (axis, k)
    net, shape = build("timm_swin", "perturbed")
    net.layers[1].downsample.reduction.weight.data = net.layers[1].downsample.reduction.weight.data[k1][:, merged]
    _narrower(net, axes)
    with torch.no_grad():
        want = net(example_input(shape)).numpy()
    got = run_ort(out, example_input(shape).numpy())
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= RTOL * scale
    assert float(np.abs(run_ort(proto, example_input(shape).numpy()) - want).max()) > 100 * RTOL * scale
