"""Model inputs made from real images: what INT8 calibration, FP16 range checks and parity checks feed a model.

Each image (HxWx3 uint8 RGB, read with :func:`models.data.load_image`) goes through the same preprocessing as
:class:`runtime.session.OnnxSegmenter` (the same functions of :mod:`models.data`): bilinear resize to the model's
input size ``(H, W)`` (:func:`models.data.resize_image`: PIL, on uint8), then ``x = (rgb / 255 - mean) / std``
as a ``1 x 3 x H x W`` array of the input's dtype (float32, or float16 for a model with FP16 I/O). Size and
normalisation come from the model's ``vitseg.*`` metadata, else from the input's static shape and the ImageNet
statistics of :mod:`models.constants`.

A data argument is either a folder in the LPCV layout (``ROOT/IMG/<split>/*.png``), a plain folder of images, the
word ``synthetic``, which renders a small synthetic set (:mod:`models.synthetic`) at the model's input size in a
temporary folder (numbers measured on it are synthetic and must say so), or the word ``noise``: images of uniform
random pixels (seeded), for a model whose data is not at hand.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fileformat.errors import InputError
from fileformat.metadata import read_metadata
from models.constants import MEAN, STD
from models.data import IMAGE_DIR, IMAGE_SUFFIXES, DataError, find_samples, load_image, normalize, resize_image

__all__ = [
    "NOISE",
    "SYNTHETIC",
    "CalibrationDataError",
    "InputSpec",
    "calibration_feeds",
    "image_feeds",
    "input_spec",
    "list_images",
    "noise_feeds",
    "resolve_data",
]

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
NOISE = "noise"

_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


class CalibrationDataError(InputError):
    """No usable images (missing folder, empty folder, zero requested): the message says what to give instead."""


@dataclass(frozen=True)
class InputSpec:
    """How to turn an image into the model's input.

    Attributes:
        name: the graph input's name.
        size: ``(H, W)`` the image is resized to.
        mean, std: per-channel normalisation of RGB in [0, 1].
        dtype: numpy dtype of the input (float32 or float16).
    """

    name: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: type

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> ``1 x 3 x H x W`` normalised array of :attr:`dtype`."""
        x = normalize(resize_image(image, self.size), self.mean, self.std)  # 3 x H x W float32
        return np.ascontiguousarray(x[None].astype(self.dtype, copy=False))  # 1 x 3 x H x W


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The :class:`InputSpec` of a one-image-input segmentation model (metadata first, then the declaration).

    Raises:
        CalibrationDataError: the model has no float NCHW input, or no input size in its metadata and a dynamic
            spatial shape.
    """
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise CalibrationDataError(f"expected one image input, the model has {len(inputs)}: {[i.name for i in inputs]}")
    inp = inputs[0]
    ttype = inp.type.tensor_type
    if ttype.elem_type not in _ONNX_TO_NUMPY:
        raise CalibrationDataError(f"input {inp.name!r} is not float32/float16 (ONNX type {ttype.elem_type})")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    if len(dims) != 4 or (dims[1] not in (None, 3)):
        raise CalibrationDataError(f"input {inp.name!r} has shape {dims}; expected N x 3 x H x W")
    meta = read_metadata(model)
    if meta.get("input_size"):
        size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
    elif dims[2] and dims[3]:
        size = (int(dims[2]), int(dims[3]))
    else:
        raise CalibrationDataError(
            f"input {inp.name!r} has dynamic spatial dims and the model has no vitseg.input_size metadata; "
            "export it with exporters.export (which records the size)"
        )
    mean = tuple(float(v) for v in (meta.get("mean") or MEAN))
    std = tuple(float(v) for v in (meta.get("std") or STD))
    return InputSpec(inp.name, size, mean, std, _ONNX_TO_NUMPY[ttype.elem_type])  # type: ignore[arg-type]


def list_images(data: Path | str, split: str = "train") -> list[Path]:
    """Image files of ``DATA/IMG/<split>`` (LPCV layout) or, failing that, of the folder ``DATA`` itself.

    Raises:
        CalibrationDataError: the folder is missing or holds no image.
    """
    root = Path(data)
    if not root.is_dir():
        raise CalibrationDataError(
            f"calibration data {root}: no such folder. Give a folder in the LPCV layout (ROOT/IMG/{split}/*.png), "
            f"a folder of images, or '{SYNTHETIC}'."
        )
    if (root / IMAGE_DIR / split).is_dir():
        try:
            return [s.image_path for s in find_samples(root, split, require_masks=False)]
        except DataError as exc:
            raise CalibrationDataError(f"calibration data: {exc}") from None
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(
            f"calibration data {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it, and no {IMAGE_DIR}/{split}/ "
            "folder. Give a folder in the LPCV layout, a folder of images, or 'synthetic'."
        )
    return files


def image_feeds(
    files: list[Path],
    spec: InputSpec,
    *,
    count: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``{input name: 1 x 3 x H x W}`` feeds, one per image, reading each file only when asked for.

    ``count`` takes the first ``count`` files (by name); a tqdm progress bar goes to stderr when ``progress``.

    Raises:
        CalibrationDataError: ``count`` < 1 or no files.
    """
    if count is not None and count < 1:
        raise CalibrationDataError(f"calibration count must be at least 1, got {count}")
    if not files:
        raise CalibrationDataError("no calibration images were given")
    chosen = files[:count] if count is not None else files
    from tqdm import tqdm

    for path in tqdm(chosen, desc=desc, unit="img", disable=not progress, leave=False, file=sys.stderr):
        try:
            image = load_image(path)
        except DataError as exc:
            raise CalibrationDataError(f"calibration image {exc}") from None
        yield {spec.name: spec.to_input(image)}


@contextlib.contextmanager
def resolve_data(data: str | Path, size: tuple[int, int], count: int, seed: int = 0) -> Iterator[Path]:
    """Context manager giving a data folder: ``data`` itself, or for ``synthetic`` a fresh synthetic set.

    The synthetic set has ``count`` training and ``count`` validation images of side ``max(size)`` (at least 32),
    rendered with ``seed`` into a temporary folder removed on exit.
    """
    if str(data) != SYNTHETIC:
        yield Path(data)
        return
    from models.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="vitseg-calib-") as tmp:
        root = Path(tmp) / "synthetic"
        side = max(32, int(max(size)))
        logger.info("rendering %d synthetic calibration images at %dx%d (seed %d)", count, side, side, seed)
        generate(root, n_train=count, n_val=count, size=side, seed=seed, workers=1)
        yield root


@contextlib.contextmanager
def calibration_feeds(
    model: onnx.ModelProto,
    data: str | Path,
    *,
    split: str = "train",
    count: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
) -> Iterator[Iterator[dict[str, np.ndarray]]]:
    """Context manager streaming the model's calibration feeds from ``data`` (a folder or ``synthetic``).

    The one way the precision passes read calibration images: the input spec from the model's metadata, the
    folder (or a temporary synthetic set, removed on exit), the first ``count`` images of ``split``.
    """
    spec = input_spec(model)
    if str(data) == NOISE:
        yield noise_feeds(spec, count or 1)
        return
    with resolve_data(data, spec.size, count or 1) as root:
        yield image_feeds(list_images(root, split), spec, count=count, progress=progress, desc=desc)


def noise_feeds(spec: InputSpec, count: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``count`` feeds of images whose pixels are uniform random in 0..255 (seeded), normalised as real ones."""
    if count < 1:
        raise CalibrationDataError(f"calibration count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    for _ in range(count):
        image = rng.integers(0, 256, (*spec.size, 3), dtype=np.uint8)
        yield {spec.name: spec.to_input(image)}
