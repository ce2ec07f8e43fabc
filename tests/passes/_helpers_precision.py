"""Shared pieces of the precision tests (FP16, INT8): a briefly trained small model and hand-built graphs.

Not a conftest: test modules import what they need, and the trained model is built once per test run, whichever
test module asks first, on whichever pytest-xdist worker (the other waits for it and reads the files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from _shared import shared_dir, write_once
from onnx import TensorProto, helper, numpy_helper

TRAIN_IMAGES = 24
VAL_IMAGES = 12
TRAIN_STEPS = 20


@dataclass(frozen=True)
class TrainedModel:
    """A mobilevit_xxs trained for ``TRAIN_STEPS`` steps on a small synthetic set, exported at 64x64.

    Attributes:
        data: the synthetic set (``IMG/{train,val}``, ``GT/{train,val}``; 24 train and 12 val images, 64x64).
        onnx13, onnx17: legacy exports at opsets 13 (decomposed LayerNorm) and 17 (LayerNormalization).
        val_miou_torch: mIoU of the torch model on the validation split (shows that training did something).
    """

    data: Path
    onnx13: Path
    onnx17: Path
    val_miou_torch: float


def _train(data: Path, steps: int, batch: int, seed: int) -> tuple[object, float]:
    """Train mobilevit_xxs on the full 64x64 training images (random flips), AdamW; return (model, val mIoU)."""
    import torch
    import torch.nn.functional as F

    from models.data import find_samples, load_image, load_mask, normalize
    from models.registry import build_model
    from runtime.metrics import MetricAccumulator

    def arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        samples = find_samples(data, split)
        x = np.stack([normalize(load_image(s.image_path)) for s in samples])  # N x 3 x H x W
        y = np.stack([load_mask(s.mask_path) for s in samples]).astype(np.int64)  # N x H x W
        return torch.from_numpy(x), torch.from_numpy(y)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xs, ys = arrays("train")
    model = build_model("mobilevit_xxs")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(xs), generator=gen)[:batch]
        x, y = xs[idx], ys[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv, yv = arrays("val")
    with torch.no_grad():
        pred = model(xv).argmax(1).numpy()
    acc = MetricAccumulator()
    acc.update(yv.numpy(), pred)
    return model, acc.result().miou


def trained_model(factory: pytest.TempPathFactory) -> TrainedModel:
    """Generate the data, train mobilevit_xxs briefly (see ``_train``) and export it, once per test run."""
    root = shared_dir(factory, "precision")
    paths = {opset: root / f"trained_xxs_op{opset}.onnx" for opset in (13, 17)}

    def build(summary: Path) -> None:
        import torch

        from exporters.export import ExportOptions, export_torch_model
        from models.synthetic import generate

        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # the other worker waits for this model
        try:
            generate(root / "syn64", n_train=TRAIN_IMAGES, n_val=VAL_IMAGES, size=64, seed=3, workers=1)
            model, miou = _train(root / "syn64", TRAIN_STEPS, batch=6, seed=0)
            for opset, path in paths.items():
                opts = ExportOptions(model="mobilevit_xxs", input_size=64, opset=opset, exporter="legacy")
                export_torch_model(model, path, opts)
        finally:
            torch.set_num_threads(threads)
        summary.write_text(json.dumps({"val_miou_torch": miou}))

    summary = json.loads(write_once(root / "trained.json", build).read_text())
    return TrainedModel(root / "syn64", paths[13], paths[17], summary["val_miou_torch"])


# ------------------------------------------------------------------------------------------- hand-built graphs


def _const(name: str, value: np.ndarray | float) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(np.asarray(value, np.float32))
    )


def layernorm_sandwich(seed: int = 0, tokens: int = 16, dim: int = 32, opset: int = 13) -> onnx.ModelProto:
    """``x -> MatMul(W1) -> decomposed LayerNorm (9 ops, as the opset-13 exporter writes it) -> MatMul(W2) -> y``.

    ``x [1, tokens, dim]``; ``W1 = I + 0.01 N(0, 1)`` so the LayerNorm input is ``~x`` (a few hundred for the test
    inputs), where ``(x - mean)^2`` exceeds 65504. ``W2 = 0.1 N(0, 1)``; gamma ``1 + 0.1 N``, beta ``0.1 N``.
    """
    rng = np.random.default_rng(seed)
    w1 = (np.eye(dim) + 0.01 * rng.standard_normal((dim, dim))).astype(np.float32)
    w2 = (0.1 * rng.standard_normal((dim, dim))).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("ReduceMean", ["h"], ["mu"], name="ln/ReduceMean", axes=[-1], keepdims=1),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="ln/Sub"),
        _const("two", 2.0),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="ln/Pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="ln/ReduceMean_1", axes=[-1], keepdims=1),
        _const("eps", 1e-5),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="ln/Add"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln/Sqrt"),
        helper.make_node("Div", ["d", "std"], ["n"], name="ln/Div"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="ln/Mul"),
        helper.make_node("Add", ["ng", "beta"], ["ln_out"], name="ln/Add_1"),
        helper.make_node("MatMul", ["ln_out", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "layernorm_sandwich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (gamma, "gamma"), (beta, "beta"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def hot_conv(size: int = 32, gain: float = 2.0e4, seed: int = 0) -> onnx.ModelProto:
    """An image model whose activation leaves the FP16 range although no weight does and no block list sees it.

    ``image [1,3,S,S] -> Conv1x1(W = gain * U(0.5, 1), 3 -> 4) -> Mul(1e-3) -> Conv1x1(14 classes) -> logits``.
    With normalised pixels of magnitude ~1-2.6 the first conv reaches ``~3 * 2 * gain`` = 1e5 > 65504, while every
    weight (<= 2e4) and the final output (~1e2) fit in FP16.
    """
    rng = np.random.default_rng(seed)
    w1 = (gain * rng.uniform(0.5, 1.0, (4, 3, 1, 1))).astype(np.float32)
    w2 = rng.standard_normal((14, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["hot"], name="hot/Conv"),
        _const("scale", 1e-3),
        helper.make_node("Mul", ["hot", "scale"], ["cool"], name="cool/Mul"),
        helper.make_node("Conv", ["cool", "w2"], ["logits"], name="cls/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "hot_conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 14, size, size])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """First output of ``model`` under onnx's reference evaluator (true FP16 arithmetic for float16 tensors)."""
    from onnx.reference import ReferenceEvaluator

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.asarray(ReferenceEvaluator(model).run(None, feed)[0])
