"""The structural passes on a zoo of external models (timm, torchvision, transformers, a CNN), as users export them.

Every case is model x export (legacy opset 13/17, dynamo saved as one file) x weights (fresh init / perturbed):

* prune_heads and slice_neurons at ratio 0.5 must remove units where the model has them and equal the zeroing
  oracle (the unpruned model with the removed units' consuming weights zeroed) to 1e-4 of the output's scale,
  while zeroing other units (the kept sets shifted by one) must not match;
* every attention block with two or more heads and every MLP must be found and followed (none skipped);
* slice_channels (ratio 0.5) and compress (half the FLOPs) must run, cut where the model has conv channels, and
  give a model that onnxruntime runs with the original output shape; both also equal their zeroing oracles.

The default run (``make test``) takes the small models; ``make test-zoo`` runs the rest (marker ``zoo``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers_channels import analysis_oracle
from _helpers_prune import input_for, oracle_error, run_ort
from _zoo import EXPORTS, MODELS, VARIANTS, exported
from test_compress import _combined_oracle

from fileformat.plan import read_plan
from passes._core.channels import ChannelAnalysis
from passes.compress import CompressConfig, compress
from passes.prune_heads import PruneHeadsConfig, find_attention_blocks, prune_heads, zero_heads
from passes.slice_channels import SliceChannelsConfig, slice_channels
from passes.slice_neurons import SliceNeuronsConfig, find_mlps, slice_neurons, zero_neurons

RTOL = 1e-4  # max abs difference over the reference output's max abs
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
    return tmp_path_factory.mktemp("zoo")


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


def _check_runs(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    x = input_for(model)
    want, got = run_ort(model, x), run_ort(out, x)
    assert got.shape == want.shape, f"output shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all()


# ------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("model", "export_id", "variant"), cases("found"))
def test_units_are_found(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    """Every attention block of two or more heads and every MLP is found and can be pruned (none skipped)."""
    proto = _load(zoo_root, model, export_id, variant)
    blocks = [b for b in find_attention_blocks(proto) if b.count != 1]
    skipped = [f"{b.id}: {b.skip_reason}" for b in blocks if not b.prunable]
    assert not skipped, f"{len(skipped)} of {len(blocks)} attention blocks skipped; first: {skipped[0]}"
    assert len(blocks) == MODELS[model].heads
    mlps = find_mlps(proto)
    skipped = [f"{m.id}: {m.skip_reason}" for m in mlps if not m.prunable]
    assert not skipped, f"{len(skipped)} of {len(mlps)} MLPs skipped; first: {skipped[0]}"
    assert len(mlps) == MODELS[model].mlps


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("prune_heads"))
def test_prune_heads(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    pruned, report = prune_heads(proto, PruneHeadsConfig(ratio=0.5))
    if not MODELS[model].heads:
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
        analysis = ChannelAnalysis(proto)
        by_name = {g.name: g.gid for g in analysis.groups}
        keep = {by_name[name]: e["kept"] for name, e in read_plan(out)["channels"].items() if name in by_name}
        x = input_for(proto)
        want = run_ort(analysis_oracle(proto, analysis, keep), x)
        err = float(np.abs(run_ort(out, x) - want).max()) / float(np.abs(want).max())
        assert err <= RTOL, f"cut model != zeroing oracle: relative error {err:.3g}"


@pytest.mark.parametrize(("model", "export_id", "variant"), cases("compress"))
def test_compress(zoo_root: Path, model: str, export_id: str, variant: str) -> None:
    proto = _load(zoo_root, model, export_id, variant)
    out, report = compress(proto, CompressConfig(target_flops=0.5))
    assert report.modified and report.flops_after < report.flops_before, f"nothing removed: {report.skipped}"
    _check_runs(proto, out)
    x = input_for(proto)
    want = run_ort(_combined_oracle(proto, read_plan(out)), x)
    err = float(np.abs(run_ort(out, x) - want).max()) / float(np.abs(want).max())
    assert err <= RTOL, f"compressed model != zeroing oracle: relative error {err:.3g}"
