"""Segmenters and the evaluation CLI, end to end on a tiny synthetic set with small exported models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.constants import CLASS_NAMES
from models.data import iter_samples
from runtime.evaluate import PALETTE, EvalConfig, compare, evaluate, main, overlay_panels
from runtime.session import OnnxSegmenter, Segmenter, TorchSegmenter, resize_bilinear, resize_nearest


@pytest.mark.parametrize(("src", "dst"), [((7, 9), (16, 20)), ((16, 16), (64, 48)), ((20, 30), (8, 11))])
def test_resize_bilinear_matches_torch(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal((3, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst), ref, atol=1e-5)


def test_resize_nearest_keeps_labels() -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    up = resize_nearest(labels, (6, 8))
    np.testing.assert_array_equal(up[::2, ::2], labels)
    np.testing.assert_array_equal(resize_nearest(up, (3, 4)), labels)


def test_onnx_and_torch_segmenters_agree(tiny_onnx: dict[str, Path], tiny_net: torch.nn.Module, syn_tiny: Path) -> None:
    """The same weights scored through onnxruntime and torch give the same predictions (one code path)."""
    images = [s.image for s in iter_samples(syn_tiny, "val")]
    onnx_dyn = OnnxSegmenter(tiny_onnx["dynamic"], threads=1)
    assert onnx_dyn.input_size is None and onnx_dyn.max_batch is None  # dynamic dims: fed at the image's size
    assert onnx_dyn.class_names == CLASS_NAMES and onnx_dyn.mean == pytest.approx((0.485, 0.456, 0.406))
    torch_seg = TorchSegmenter(tiny_net)
    pa = onnx_dyn.predict(images, batch_size=4)
    pb = torch_seg.predict(images, batch_size=4)
    assert all(p.shape == (64, 64) and p.dtype == np.uint8 for p in pa)
    agree = np.mean([np.mean(a == b) for a, b in zip(pa, pb)])
    assert agree > 0.999
    la = onnx_dyn.predict_logits(images[:2], batch_size=2)
    lb = torch_seg.predict_logits(images[:2], batch_size=2)
    np.testing.assert_allclose(la[0], lb[0], atol=1e-4)
    # a static 32x32 input without metadata: images are resized to 32, logits upsampled back to 64
    static = OnnxSegmenter(tiny_onnx["static32"], threads=1)
    assert static.input_size == (32, 32) and static.max_batch == 1
    ps = static.predict(images[:3], batch_size=4)
    assert [p.shape for p in ps] == [(64, 64)] * 3
    ref = TorchSegmenter(tiny_net, input_size=(32, 32)).predict(images[:3])
    assert np.mean([np.mean(a == b) for a, b in zip(ps, ref)]) > 0.999
    assert OnnxSegmenter(tiny_onnx["static32"], threads=1, input_size=(48, 48)).input_size == (48, 48)  # flag overrides


def test_evaluate_api_and_compare(tiny_onnx: dict[str, Path], tiny_net: torch.nn.Module, syn_tiny: Path) -> None:
    seg = OnnxSegmenter(tiny_onnx["dynamic"], threads=1)
    cfg = EvalConfig(batch_size=2, progress=False, num_overlays=0)
    res = evaluate(seg, syn_tiny, "val", cfg)
    assert res["num_images"] == 6 and res["data"]["synthetic"] is True
    assert sum(c["gt_pixels"] for c in res["per_class"]) == 6 * 64 * 64
    assert np.asarray(res["confusion"]).sum() == 6 * 64 * 64
    both = compare(seg, TorchSegmenter(tiny_net), syn_tiny, "val", cfg)
    assert both["agreement"] > 0.999
    assert abs(both["delta"]["miou"]) < 1e-3
    assert both["a"]["miou"] == pytest.approx(res["miou"])
    limited = evaluate(seg, syn_tiny, "val", EvalConfig(limit=2, progress=False))
    assert limited["num_images"] == 2


def test_cli_end_to_end_with_exported_model(
    exported: Callable[..., Path], syn_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = exported("mobilevit_xxs", size=64)
    seg = OnnxSegmenter(model, threads=1)
    assert seg.input_size == (64, 64) and seg.metadata["input_size"] == [64, 64]
    out_json, out_dir = tmp_path / "m.json", tmp_path / "plots"
    rc = main(
        [str(model), "--data", str(syn_tiny), "--split", "val", "--batch-size", "2", "--json", str(out_json)]
        + ["--out-dir", str(out_dir), "--no-progress", "--threads", "1"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "mIoU" in captured.out and "SYNTHETIC" in captured.out
    res = json.loads(out_json.read_text())
    for key in ("miou", "mdice", "pixel_accuracy", "per_class", "confusion", "images_per_second", "num_images"):
        assert key in res
    assert res["num_images"] == 6 and res["data"]["synthetic"] is True and res["data"]["root"] == str(syn_tiny)
    assert [c["name"] for c in res["per_class"]] == list(CLASS_NAMES)
    assert set(res["per_class"][0]) >= {"name", "iou", "dice", "gt_pixels", "pred_pixels"}
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["mdice"] <= 1.0 and res["images_per_second"] > 0
    for png in ("per_class_iou.png", "overlays.png"):
        data = (out_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    # comparison mode: the model against itself agrees everywhere, deltas are zero
    cmp_json = tmp_path / "cmp.json"
    rc = main(
        [
            str(model),
            "--data",
            str(syn_tiny),
            "--compare",
            str(model),
            "--json",
            str(cmp_json),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    cmp = json.loads(cmp_json.read_text())
    assert cmp["agreement"] == 1.0 and cmp["delta"]["miou"] == 0.0
    assert all(d["iou"] in (0.0, None) for d in cmp["delta"]["per_class"])
    assert "prediction agreement" in capsys.readouterr().out


def test_cli_errors(
    tiny_onnx: dict[str, Path], syn_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "missing.onnx"), "--data", str(syn_tiny)]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert main([str(tiny_onnx["dynamic"]), "--data", str(tmp_path / "nodata")]) == 1
    assert "no such data folder" in capsys.readouterr().err
    assert main([str(tiny_onnx["dynamic"]), "--data", str(syn_tiny), "--split", "test", "--no-progress"]) == 2
    assert "--split 'test': " in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    assert main([str(bad), "--data", str(syn_tiny), "--no-progress"]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_onnx["dynamic"])])  # --data is required: usage error
    assert exc.value.code == 2


class _Constant(Segmenter):
    """Predicts one class everywhere."""

    def __init__(self, cls: int) -> None:
        super().__init__(f"class{cls}", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), CLASS_NAMES)
        self.cls = cls

    def forward(self, batch: np.ndarray) -> np.ndarray:
        out = np.zeros((batch.shape[0], len(CLASS_NAMES), *batch.shape[2:]), dtype=np.float32)
        out[:, self.cls] = 1.0
        return out


def test_compare_overlays_show_both_models(syn_tiny: Path, tmp_path: Path) -> None:
    """--compare draws A's and B's predictions side by side, and where they disagree."""
    a, b = _Constant(0), _Constant(9)
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    panels = overlay_panels(
        "x", img, np.zeros((8, 8), dtype=np.int64), [np.zeros((8, 8), int), np.full((8, 8), 9)], ["A", "B"]
    )
    assert [t for _, t in panels][2:] == ["A", "B", "disagreement (100.0% of pixels)"]
    assert (panels[3][0] == np.asarray(PALETTE[9], dtype=np.uint8)).all()  # B's prediction, not A's
    compare(a, b, syn_tiny, "val", EvalConfig(num_overlays=1, progress=False), tmp_path)
    pic = np.asarray(Image.open(tmp_path / "overlays.png").convert("RGB"))
    b_pixels = int(np.all(pic == np.asarray(PALETTE[9], dtype=np.uint8), axis=-1).sum())
    assert b_pixels > 2000  # a whole panel of B's class, not only its legend patch
