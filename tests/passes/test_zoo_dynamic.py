"""The structural passes on the zoo's models exported with symbolic dimensions, as torch's tutorials, Optimum and the
model zoos export them: a dynamic batch (every family, both exporters) and a dynamic batch, height and width (the
families whose export runs at other sizes; the others hold their size in a position embedding or a patch grid).

Per case (model x dynamic export, perturbed weights) and pass:

* the pass cuts as on the static export of the same form: as many units of each kind, each kept to the same count
  (the file is traced with the batch bound to 1 and the size to the one it was exported at);
* the written file keeps its symbolic dimensions;
* it equals its zeroing oracle at the traced shape and at other batches and sizes (a width, whose LayerNorm
  statistics change, has no zeroing oracle: it computes what the static export's cut computes, and runs at the
  other shapes).

``make test`` runs one case (:data:`DEFAULT`) and holds the same checks on the project's models
(tests/passes/test_symbolic.py); ``make test-zoo`` runs the rest (marker ``zoo``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _shared import run_at, symbols
from _zoo import DYNAMIC, MODELS, exported
from test_compress import EXACT

from fileformat.metadata import write_metadata
from fileformat.plan import read_plan
from passes._core.oracle import plan_oracle
from passes.compress import CompressConfig, compress
from passes.prune_heads import PruneHeadsConfig, prune_heads
from passes.slice_channels import SliceChannelsConfig, slice_channels
from passes.slice_neurons import SliceNeuronsConfig, slice_neurons
from passes.slice_width import SliceWidthConfig, slice_width

RTOL = 1e-4
PASSES = {  # name: (run, plan section)
    "prune_heads": (lambda m: prune_heads(m, PruneHeadsConfig(ratio=0.5)), "heads"),
    "slice_neurons": (lambda m: slice_neurons(m, SliceNeuronsConfig(ratio=0.5)), "neurons"),
    "head_dim": (lambda m: slice_width(m, SliceWidthConfig(ratio=0.5, kind="head_dim")), "head_dim"),
    "width": (lambda m: slice_width(m, SliceWidthConfig(ratio=0.5, kind="width")), "width"),
    "slice_channels": (lambda m: slice_channels(m, SliceChannelsConfig(ratio=0.5)), "channels"),
    "compress": (lambda m: compress(m, CompressConfig(target_flops=0.5, units=EXACT, importance="l2")), None),
}


#: what ``make test`` runs (``nn.MultiheadAttention``'s ``batch * heads`` under a dynamic batch); the rest is marked
#: zoo (``make test-zoo``)
DEFAULT = {("tv_vit", "legacy17-batch")}


def cases() -> list:
    out = []
    for model, spec in MODELS.items():
        for export_id, (static, axes) in DYNAMIC.items():
            marks = [] if (model, export_id) in DEFAULT else [pytest.mark.zoo]
            skip = spec.export_skip(export_id) or spec.export_skip(static)
            if skip:
                marks.append(pytest.mark.skip(reason=f"torch cannot export it: {skip}"))
            elif axes == "size" and not spec.sides:
                marks.append(pytest.mark.skip(reason="its export runs at the size it was exported at only"))
            for name in PASSES:
                out.append(pytest.param(model, export_id, name, marks=marks, id=f"{model}-{export_id}-{name}"))
    return out


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _shared import shared_dir

    return shared_dir(tmp_path_factory, "zoo")


def _load(root: Path, model: str, export_id: str) -> onnx.ModelProto:
    if MODELS[model].requires:
        pytest.importorskip(MODELS[model].requires)
    proto = exported(root, model, export_id, "perturbed")[0]
    if DYNAMIC.get(export_id, ("", ""))[1] == "size":  # the size to trace at, as --input-size gives it
        write_metadata(proto, {"input_size": list(MODELS[model].shape[2:])})
    return proto


def _shapes(model: str, axes: str) -> list[tuple[int, ...]]:
    """The exported shape, then other batches (and sizes)."""
    shape = MODELS[model].shape
    out = [shape, (3, *shape[1:])]
    if axes == "size":
        out += [(2, shape[1], s, s) for s in MODELS[model].sides]
    return out


def _counts(plan: dict, section: str) -> list[tuple[int, int]]:
    """``(units, kept)`` of every cut entry of ``section``: unit ids differ between exports, what is cut does not."""
    return sorted((int(e["total"]), len(e["kept"])) for e in plan.get(section, {}).values())


@pytest.mark.parametrize(("model", "export_id", "name"), cases())
def test_a_dynamic_export_is_cut_as_the_static_one(zoo_root: Path, model: str, export_id: str, name: str) -> None:
    static_id, axes = DYNAMIC[export_id]
    run, section = PASSES[name]
    dynamic, static = _load(zoo_root, model, export_id), _load(zoo_root, model, static_id)
    out, report = run(dynamic)
    out_static, report_static = run(static)
    plan, plan_static = read_plan(out) if report.modified else {}, read_plan(out_static)
    sections = [section] if section else ["heads", "head_dim", "neurons", "channels"]
    differ = [s for s in sections if _counts(plan, s) != _counts(plan_static, s)]
    assert not differ, f"cut otherwise than the static export in {differ}: {report.skipped[:3]}"
    if not report.modified:
        return
    assert symbols(out) == symbols(dynamic)
    shapes = _shapes(model, axes)
    if name == "width":  # no zeroing oracle: the static export's cut at its shape, and it runs at the others
        want = run_at(out_static, shapes[0])
        assert np.abs(run_at(out, shapes[0]) - want).max() <= RTOL * float(np.abs(want).max())
        for shape in shapes[1:]:
            assert np.isfinite(run_at(out, shape)).all()
        return
    oracle = plan_oracle(dynamic, plan)
    for shape in shapes:
        want, got = run_at(oracle, shape), run_at(out, shape)
        assert got.shape == want.shape, shape
        scale = float(np.abs(want).max())
        assert np.abs(got - want).max() <= RTOL * scale, shape
