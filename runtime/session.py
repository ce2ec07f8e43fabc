"""Segmenters: one interface for an ONNX file (onnxruntime) and a torch module, so both are scored alike.

Pipeline of :meth:`Segmenter.predict` for each image (HxWx3 uint8 RGB):

1. resize to the model's input size ``(h, w)`` with bilinear interpolation (PIL, on uint8; skipped when the sizes
   already match; a model with dynamic spatial dims gets the image at its own size);
2. normalise: ``x = (rgb / 255 - mean) / std``, CHW float32 (``models.data.normalize``);
3. run the model on a batch -> logits ``N x C x h' x w'`` (any output resolution);
4. **upsample the logits** bilinearly (half-pixel centres, ``align_corners=False``, the same as
   ``torch.nn.functional.interpolate``) to the image's own size (= mask size), then ``argmax`` over classes.

Upsampling logits rather than nearest-resizing a class map gives smooth class boundaries and is what mmseg and the
reference paper do at test time; it costs a ``C x H x W`` float buffer per image. A model whose output is already a
class map (integer ``N x H x W`` or ``N x 1 x H x W``) is resized with nearest neighbour instead.

Where the size and normalisation come from, for an ONNX file: the ``vitseg.*`` metadata the exporter writes
(``fileformat.metadata``); else the input's declared static ``H x W`` (or each image's own size where it is dynamic)
and ImageNet mean/std from ``models.constants``; explicit constructor arguments override both.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fileformat.errors import InputError, MissingInputError
from models.constants import CLASS_NAMES, MEAN, NUM_CLASSES, STD
from models.data import normalize, resize_image  # resize_image: re-exported, it lives with the data

__all__ = ["OnnxSegmenter", "Segmenter", "TorchSegmenter", "resize_bilinear", "resize_image", "resize_nearest"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- resizing


def _interp_matrix(out_len: int, in_len: int) -> np.ndarray:
    """``[out_len, in_len]`` linear-interpolation weights with half-pixel centres (torch ``align_corners=False``).

    Output ``i`` samples source coordinate ``s = (i + 0.5) * in/out - 0.5`` clamped at 0; it reads
    ``floor(s)`` with weight ``1 - frac(s)`` and ``floor(s) + 1`` (clamped to the last index) with ``frac(s)``.
    """
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = src - i0
    m = np.zeros((out_len, in_len), np.float64)
    rows = np.arange(out_len)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes of ``x`` (e.g. ``C x h x w``) to ``size = (H, W)``.

    Separable: ``out = R_y @ x @ R_x^T`` with ``R_y [H, h]``, ``R_x [W, w]`` from :func:`_interp_matrix`; equal to
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing).
    """
    h, w = x.shape[-2:]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x
    ry = _interp_matrix(out_h, h).astype(np.float32)
    rx = _interp_matrix(out_w, w).astype(np.float32)
    return np.matmul(np.matmul(ry, x.astype(np.float32, copy=False)), rx.T)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes (label maps); source index ``floor((i + 0.5) * in/out)``."""
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[..., ys[:, None], xs[None, :]]


# ------------------------------------------------------------------------------------------------ segmenters


class Segmenter(ABC):
    """Shared pre/post-processing around a backend's :meth:`forward`.

    Attributes:
        name: for reports (file name or module class).
        input_size: ``(H, W)`` the model is fed, or None to feed each image at its own size.
        mean, std: normalisation of RGB in [0, 1].
        max_batch: largest batch the backend accepts (None = any).
        class_names: class names, index = class id.
        forward_seconds / forward_images: accumulated time spent in :meth:`forward` and images run through it.
    """

    def __init__(
        self,
        name: str,
        input_size: tuple[int, int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        max_batch: int | None = None,
    ) -> None:
        self.name = name
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.class_names = tuple(class_names)
        self.max_batch = max_batch
        self.forward_seconds = 0.0
        self.forward_images = 0

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.class_names)

    @abstractmethod
    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the model: ``N x 3 x H x W`` float32 normalised -> logits ``N x C x h x w`` (or a class map)."""

    def describe(self) -> dict[str, Any]:
        """What the segmenter feeds the model, for reports."""
        return {
            "name": self.name,
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
        }

    def _batches(self, images: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
        """Index groups of at most ``batch_size`` images that share a model input size, in order."""
        limit = max(1, batch_size if self.max_batch is None else min(batch_size, self.max_batch))
        groups: list[list[int]] = []
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise InputError(f"image {i}: expected HxWx3 uint8, got {img.shape} {img.dtype}")
            size = self.input_size or img.shape[:2]
            last = groups[-1] if groups else None
            if last and len(last) < limit and (self.input_size or images[last[0]].shape[:2] == size):
                last.append(i)
            else:
                groups.append([i])
        return groups

    def _run(self, images: Sequence[np.ndarray], idx: list[int]) -> np.ndarray:
        size = self.input_size or images[idx[0]].shape[:2]
        batch = normalize(np.stack([resize_image(images[i], size) for i in idx]), self.mean, self.std)
        t0 = time.perf_counter()
        out = np.asarray(self.forward(batch))
        self.forward_seconds += time.perf_counter() - t0
        self.forward_images += len(idx)
        if out.ndim not in (3, 4) or out.shape[0] != len(idx):
            raise InputError(f"{self.name}: unexpected output shape {out.shape} for a batch of {len(idx)}")
        return out

    def predict_logits(self, images: Sequence[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        """Logits ``C x H x W`` float32 per image, bilinearly upsampled to each image's own size."""
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        for idx in self._batches(images, batch_size):
            logits = self._run(images, idx)
            if logits.ndim != 4 or np.issubdtype(logits.dtype, np.integer):
                raise InputError(f"{self.name}: the model outputs a class map {logits.shape}, not logits")
            for j, i in enumerate(idx):
                out[i] = resize_bilinear(logits[j].astype(np.float32, copy=False), images[i].shape[:2])
        return out

    def predict(
        self,
        images: Sequence[np.ndarray],
        batch_size: int = 1,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[np.ndarray]:
        """Class maps (HxW uint8) per image, at the image's size or at ``output_sizes[i]`` (e.g. the mask's)."""
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        for idx in self._batches(images, batch_size):
            res = self._run(images, idx)
            for j, i in enumerate(idx):
                size = tuple(output_sizes[i]) if output_sizes is not None else images[i].shape[:2]
                r = res[j]
                if res.ndim == 4 and res.shape[1] == 1 and np.issubdtype(res.dtype, np.integer):
                    r = r[0]
                if r.ndim == 2:  # class map
                    out[i] = resize_nearest(r, size).astype(np.uint8)
                else:
                    out[i] = np.argmax(resize_bilinear(r.astype(np.float32, copy=False), size), axis=0).astype(np.uint8)
        return out


@contextlib.contextmanager
def _onnxruntime_errors() -> Iterator[None]:
    """onnxruntime's own exceptions (a model it cannot load or run) as :class:`InputError`: "onnxruntime cannot run
    the model: " and the first line of onnxruntime's message."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"onnxruntime cannot run the model: {first}") from exc


class OnnxSegmenter(Segmenter):
    """An ONNX segmentation model run by onnxruntime.

    Args:
        path: the ``.onnx`` file (external data beside it is found by onnxruntime).
        providers: onnxruntime execution providers, short names accepted (default ``["cpu"]``).
        threads: intra-op threads (default: onnxruntime's choice).
        input_size, mean, std: override what the metadata or the input declaration says.
    """

    def __init__(
        self,
        path: Path | str,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        import onnx

        from fileformat.metadata import read_metadata
        from fileformat.session import SessionConfig, load_session, provider_names

        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"model file not found: {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
            raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        meta = read_metadata(proto)
        del proto
        config = SessionConfig(
            providers=provider_names(providers),
            threads=int(threads) if threads else None,
            inter_threads=1 if threads else None,
            spinning=True,
        )
        with _onnxruntime_errors():
            self.session = load_session(path, config)
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name = inp.name
        self.output_name = out.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        if len(shape) != 4:
            raise InputError(f"{path}: expected one NCHW image input, got {inp.name} with shape {shape}")
        declared = (shape[2], shape[3]) if all(isinstance(d, int) and d > 0 for d in shape[2:]) else None
        size = input_size or (tuple(meta["input_size"]) if meta.get("input_size") else None) or declared
        max_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        names = meta.get("classes")
        if not names:
            c = out.shape[1] if len(out.shape) == 4 and isinstance(out.shape[1], int) else NUM_CLASSES
            names = list(CLASS_NAMES) if c == NUM_CLASSES else [f"class_{i}" for i in range(c)]
        super().__init__(
            path.name,
            size,  # type: ignore[arg-type]
            mean or meta.get("mean") or MEAN,
            std or meta.get("std") or STD,
            names,
            max_batch,
        )
        self.path = path
        self.metadata = meta
        logger.info(
            "%s: input %s %s, size %s (%s), providers %s",
            path.name,
            inp.name,
            shape,
            self.input_size,
            "metadata" if meta.get("input_size") and not input_size else "declared/override/dynamic",
            self.session.get_providers(),
        )

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on one batch; float16 outputs are returned as float32."""
        with _onnxruntime_errors():
            (out,) = self.session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def describe(self) -> dict[str, Any]:
        """Adds the file, providers and whether our metadata was present."""
        d = super().describe()
        d.update(path=str(self.path), providers=self.session.get_providers(), has_metadata=bool(self.metadata))
        return d


class TorchSegmenter(Segmenter):
    """A torch ``nn.Module`` (NCHW normalised input -> logits) behind the same interface as :class:`OnnxSegmenter`.

    The module is run in eval mode under ``torch.inference_mode``; its previous train/eval mode is restored.
    ``input_size=None`` feeds each image at its own size.
    """

    def __init__(
        self,
        module: Any,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        *,
        class_names: Sequence[str] = CLASS_NAMES,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        super().__init__(name or type(module).__name__, input_size, mean, std, class_names)
        self.module = module
        self.device = device

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the module on one batch (float32 numpy in and out)."""
        import torch

        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                out = self.module(torch.from_numpy(batch).to(self.device))
        finally:
            self.module.train(was_training)
        if isinstance(out, dict):
            out = out["logits"] if "logits" in out else next(iter(out.values()))
        elif isinstance(out, tuple | list):
            out = out[0]
        return out.float().cpu().numpy()
