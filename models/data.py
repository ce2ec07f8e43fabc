"""LPCV 2023 data: file discovery, validated loading, training augmentations and a map-style dataset for torch.

Layout (docs/field-notes.md section 2)::

    ROOT/IMG/{split}/NAME.png          RGB image (greyscale / RGBA / palette are converted to RGB)
    ROOT/GT/{split}/NAME.png           mask, pixel = class id 0..13 (or the ignore index, 255)
    ROOT/GT_Updated/{split}/NAME.png   the official archive's name for the mask folder; either is accepted

A three-channel mask uses channel 0. Every problem found while reading is a :class:`DataError` that names the file;
with ``skip_invalid=True`` bad samples are skipped instead and counted in a :class:`ScanSummary`.

The plain-numpy API (``find_samples``, ``load_image``, ``load_mask``, ``iter_samples``, ``normalize``) is what
evaluation, INT8 calibration and parity checks use; :class:`LPCVDataset` adds augmentation and tensors for
training. Normalisation comes from :mod:`models.constants` (the values the exporter records in each model).

This module does not import torch until a tensor is made (:meth:`LPCVDataset.__getitem__`): the commands that
only read data (``runtime.evaluate``, ``runtime.parity``) start, and answer ``--help``, without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from fileformat.errors import InputError
from models.constants import IGNORE_INDEX, MEAN, NUM_CLASSES, STD

if TYPE_CHECKING:
    import torch

__all__ = [
    "MASK_DIRS",
    "AugmentConfig",
    "DataError",
    "LPCVDataset",
    "LoadedSample",
    "Sample",
    "ScanSummary",
    "augment",
    "check_mask",
    "check_split",
    "find_mask_dir",
    "find_samples",
    "iter_samples",
    "load_image",
    "load_mask",
    "load_sample",
    "normalize",
    "resize_image",
    "scan",
    "splits",
]

logger = logging.getLogger(__name__)

MASK_DIRS: tuple[str, ...] = ("GT", "GT_Updated")
IMAGE_DIR = "IMG"
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


class DataError(InputError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Sample:
    """One image and its mask on disk (``mask_path`` is None for an unlabelled image)."""

    name: str
    image_path: Path
    mask_path: Path | None


class LoadedSample(NamedTuple):
    """A decoded sample: ``image`` HxWx3 uint8 RGB, ``mask`` HxW uint8 class ids (or None when unlabelled)."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None


@dataclass
class ScanSummary:
    """What a scan found: how many samples were kept, and every skipped file with its reason."""

    split: str
    found: int = 0
    kept: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"split {self.split!r}: {self.kept} of {self.found} samples kept"
        if self.skipped:
            text += f", {len(self.skipped)} skipped:" + "".join(f"\n  {k}: {v}" for k, v in self.skipped.items())
        return text


# --------------------------------------------------------------------------------------------------- discovery


def find_mask_dir(root: Path | str, split: str) -> Path | None:
    """Return ``ROOT/GT/split`` or ``ROOT/GT_Updated/split`` (the first that exists), or None."""
    root = Path(root)
    existing = [root / d / split for d in MASK_DIRS if (root / d / split).is_dir()]
    if len(existing) > 1:
        logger.warning("both %s exist; using %s", " and ".join(str(p) for p in existing), existing[0])
    return existing[0] if existing else None


def find_samples(
    root: Path | str,
    split: str,
    *,
    require_masks: bool = True,
    skip_invalid: bool = False,
    summary: ScanSummary | None = None,
) -> list[Sample]:
    """List the samples of ``split`` sorted by name, pairing each image with its mask by file stem.

    Only checks that files exist (cheap); contents are checked when read (:func:`load_sample`) or by :func:`scan`.

    Raises:
        DataError: the image folder is missing or empty, or (``require_masks`` and not ``skip_invalid``) an image
            has no mask. With ``skip_invalid`` such images are left out and recorded in ``summary``.
    """
    root = Path(root)
    img_dir = root / IMAGE_DIR / split
    if not img_dir.is_dir():
        raise DataError(img_dir, f"image folder not found (expected the LPCV layout ROOT/{IMAGE_DIR}/{split}/*.png)")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(img_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    mask_dir = find_mask_dir(root, split)
    if mask_dir is None and require_masks:
        raise DataError(
            root, f"no mask folder for split {split!r}: expected {' or '.join(f'{d}/{split}' for d in MASK_DIRS)}"
        )
    masks: dict[str, Path] = {}
    if mask_dir is not None:
        masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    summary = summary if summary is not None else ScanSummary(split)
    out: list[Sample] = []
    for img in images:
        summary.found += 1
        mask = masks.get(img.stem)
        if mask is None and require_masks:
            problem = f"image has no mask (looked for {mask_dir}/{img.stem}.png)"
            if not skip_invalid:
                raise DataError(img, problem)
            summary.skipped[str(img)] = problem
            continue
        out.append(Sample(img.stem, img, mask))
    summary.kept = len(out)
    return out


def splits(root: Path | str) -> list[str]:
    """The split names of an LPCV root: the folders under ``ROOT/IMG`` (sorted)."""
    img = Path(root) / IMAGE_DIR
    return sorted(p.name for p in img.iterdir() if p.is_dir()) if img.is_dir() else []


def check_split(
    root: Path | str, split: str, option: str = "--split", data_option: str = "--data", *, require_masks: bool = True
) -> int:
    """Before any work: the number of images of ``split`` under ``root`` (cheap: names only, masks paired).

    Raises :class:`fileformat.errors.PassError` when ``root`` is not a data folder (the input cannot be used: exit 1)
    and :class:`fileformat.errors.UsageError` naming ``option`` when the folder lacks that split (exit 2)."""
    from fileformat.errors import PassError, UsageError

    root = Path(root)
    if not root.is_dir():
        raise PassError(
            f"{data_option} {root}: no such data folder (create synthetic data with: python -m models.synthetic {root})"
        )
    if not (root / IMAGE_DIR / split).is_dir():
        have = splits(root)
        raise UsageError(
            f"{option} {split!r}: {root} has no split {split!r}"
            + (f"; it has {', '.join(have)}" if have else f" (no {IMAGE_DIR}/<split>/ folders: not the LPCV layout)")
        )
    try:
        # what a run can use; bad files are its to say
        return len(find_samples(root, split, require_masks=require_masks, skip_invalid=True))
    except DataError as exc:
        raise PassError(f"{data_option} {root}: {exc}") from None


# ----------------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(path, f"unreadable image file ({type(exc).__name__}: {exc})") from None
    return im


def load_image(path: Path | str) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB. Greyscale, palette, RGBA (alpha dropped) and 16-bit are converted."""
    path = Path(path)
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def load_mask(path: Path | str) -> np.ndarray:
    """Read a mask as HxW uint8 class ids. A multi-channel mask uses channel 0; palette masks keep their indices."""
    path = Path(path)
    im = _open(path)
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"mask has unexpected shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(path, f"mask values {int(arr.min())}..{int(arr.max())} do not fit class ids (0..255)")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def check_mask(
    mask: np.ndarray,
    path: Path | str,
    *,
    image_shape: tuple[int, ...] | None = None,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
    image_path: Path | str | None = None,
) -> None:
    """Raise :class:`DataError` if ``mask`` differs in size from the image or holds an id outside the classes."""
    if image_shape is not None and tuple(mask.shape[:2]) != tuple(image_shape[:2]):
        raise DataError(
            path,
            f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its image "
            f"{image_path or ''} {image_shape[1]}x{image_shape[0]}".replace("  ", " "),
        )
    counts = np.bincount(mask.reshape(-1), minlength=256)
    counts[:num_classes] = 0
    if 0 <= ignore_index < 256:
        counts[ignore_index] = 0
    if counts.any():
        bad = np.nonzero(counts)[0].tolist()
        raise DataError(
            path,
            f"mask holds class ids {bad[:10]}{'...' if len(bad) > 10 else ''} outside 0..{num_classes - 1} "
            f"(ignore index {ignore_index})",
        )


def load_sample(sample: Sample, *, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> LoadedSample:
    """Read and validate one sample (image, and mask when it has one)."""
    image = load_image(sample.image_path)
    mask = None
    if sample.mask_path is not None:
        mask = load_mask(sample.mask_path)
        check_mask(
            mask,
            sample.mask_path,
            image_shape=image.shape,
            num_classes=num_classes,
            ignore_index=ignore_index,
            image_path=sample.image_path,
        )
    return LoadedSample(sample.name, image, mask)


def scan(
    root: Path | str,
    split: str,
    *,
    require_masks: bool = True,
    skip_invalid: bool = False,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[list[Sample], ScanSummary]:
    """Read every sample once and validate it; return the good samples and a summary.

    Without ``skip_invalid`` the first bad file raises :class:`DataError`.
    """
    summary = ScanSummary(split)
    samples = find_samples(root, split, require_masks=require_masks, skip_invalid=skip_invalid, summary=summary)
    good: list[Sample] = []
    for s in samples:
        try:
            load_sample(s, num_classes=num_classes, ignore_index=ignore_index)
        except DataError as exc:
            if not skip_invalid:
                raise
            summary.skipped[str(exc.path)] = exc.problem
            continue
        good.append(s)
    summary.kept = len(good)
    if summary.skipped:
        logger.warning("%s", summary)
    return good, summary


def iter_samples(
    root: Path | str,
    split: str,
    *,
    limit: int | None = None,
    require_masks: bool = True,
    skip_invalid: bool = False,
    summary: ScanSummary | None = None,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> Iterator[LoadedSample]:
    """Yield ``(name, image HxWx3 uint8, mask HxW uint8 | None)`` for inference, calibration and parity.

    Validates as it reads; with ``skip_invalid`` a bad sample is skipped and recorded in ``summary`` (pass one in
    to read it afterwards). ``limit`` caps the number of samples yielded (the first ones by name).
    """
    summary = summary if summary is not None else ScanSummary(split)
    samples = find_samples(root, split, require_masks=require_masks, skip_invalid=skip_invalid, summary=summary)
    summary.kept = 0
    for s in samples:
        if limit is not None and summary.kept >= limit:
            break
        try:
            loaded = load_sample(s, num_classes=num_classes, ignore_index=ignore_index)
        except DataError as exc:
            if not skip_invalid:
                raise
            summary.skipped[str(exc.path)] = exc.problem
            logger.warning("skipping %s", exc)
            continue
        summary.kept += 1
        yield loaded


def normalize(image: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 ``(rgb / 255 - mean) / std``. A batch NxHxWx3 gives Nx3xHxW."""
    x = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> ``size`` (H, W) with PIL's bilinear filter (antialiased when shrinking)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------------ augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations after the reference paper's pipeline (mmseg-style), applied in this order:

    random scale (``scale_range``, bilinear image / nearest mask), rotation by ``U(-rotate_degrees,
    rotate_degrees)`` with probability ``rotate_prob`` (image filled with 0, mask with the ignore index),
    horizontal flip, colour jitter (brightness/contrast/saturation factors ``U(1-a, 1+a)``, each with
    probability 0.5), then a random crop of ``crop_size`` (H, W); a side smaller than the crop is padded (image
    with 0, mask with the ignore index) rather than resized. ``crop_size=None`` keeps the scaled size.
    """

    crop_size: tuple[int, int] | None = (512, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_degrees: float = 10.0
    rotate_prob: float = 0.5
    hflip_prob: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    ignore_index: int = IGNORE_INDEX


def _colour_jitter(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness ``x*b``, contrast ``mean + (x-mean)*c``, saturation ``grey + (x-grey)*s``; clipped to 0..255."""
    x = image.astype(np.float32)
    draws = rng.random(6)
    if cfg.brightness > 0 and draws[0] < 0.5:
        x *= 1.0 + cfg.brightness * (2.0 * draws[1] - 1.0)
    if cfg.contrast > 0 and draws[2] < 0.5:
        m = x.mean()
        x = m + (x - m) * (1.0 + cfg.contrast * (2.0 * draws[3] - 1.0))
    if cfg.saturation > 0 and draws[4] < 0.5:
        grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        x = grey + (x - grey) * (1.0 + cfg.saturation * (2.0 * draws[5] - 1.0))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply :class:`AugmentConfig`'s geometric and photometric augmentations to a uint8 image and its mask.

    Geometric transforms are applied identically to both, so labels stay aligned; all randomness comes from
    ``rng`` (the same generator state gives the same output).
    """
    h, w = mask.shape
    img_pil, mask_pil = Image.fromarray(image), Image.fromarray(mask)
    lo, hi = cfg.scale_range
    if hi > lo or lo != 1.0:
        s = float(rng.uniform(lo, hi)) if hi > lo else lo
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            img_pil = img_pil.resize((nw, nh), Image.Resampling.BILINEAR)
            mask_pil = mask_pil.resize((nw, nh), Image.Resampling.NEAREST)
    if cfg.rotate_degrees > 0 and rng.random() < cfg.rotate_prob:
        angle = float(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
        img_pil = img_pil.rotate(angle, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        mask_pil = mask_pil.rotate(angle, Image.Resampling.NEAREST, fillcolor=cfg.ignore_index)
    img = np.asarray(img_pil)
    msk = np.asarray(mask_pil)
    if rng.random() < cfg.hflip_prob:
        img, msk = img[:, ::-1], msk[:, ::-1]
    img = _colour_jitter(img, cfg, rng)
    msk = np.ascontiguousarray(msk)
    if cfg.crop_size is not None:
        img, msk = random_crop(img, msk, cfg.crop_size, rng, cfg.ignore_index)
    return img, msk


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` = (H, W) at a random offset; sides smaller than the crop are padded at the bottom/right
    (image 0, mask ``ignore_index``) so that the output is always exactly ``size``."""
    ch, cw = size
    h, w = mask.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
        h, w = mask.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return (
        np.ascontiguousarray(image[y : y + ch, x : x + cw]),
        np.ascontiguousarray(mask[y : y + ch, x : x + cw]),
    )


# ------------------------------------------------------------------------------------------------ torch Dataset


class LPCVDataset:
    """LPCV 2023 samples as ``(image float32 3xHxW normalised, mask int64 HxW)`` tensors.

    A map-style dataset (``__len__`` and ``__getitem__``) for ``torch.utils.data.DataLoader``; it does not subclass
    ``torch.utils.data.Dataset`` so that importing this module does not import torch.

    With ``augment_config`` each item is augmented with a generator seeded by ``(seed, epoch, index)``: the result
    depends on neither worker count nor order, so a resumed run sees the same data. An item key may be an ``int``
    (uses :attr:`epoch`) or an ``(index, epoch)`` pair, which is what ``models.train``'s batch sampler yields.

    ``skip_invalid=True`` reads every file once at construction (see :func:`scan`) and keeps only good samples;
    :attr:`summary` then says what was skipped. Otherwise files are validated as they are read.
    """

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        *,
        augment_config: AugmentConfig | None = None,
        seed: int = 0,
        skip_invalid: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.augment_config = augment_config
        self.seed = seed
        self.epoch = 0
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if skip_invalid:
            self.samples, self.summary = scan(
                root, split, skip_invalid=True, num_classes=num_classes, ignore_index=ignore_index
            )
        else:
            self.summary = ScanSummary(split)
            self.samples = find_samples(root, split, summary=self.summary)
        if not self.samples:
            raise DataError(self.root / IMAGE_DIR / split, "no valid samples left")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw used for integer keys."""
        self.epoch = int(epoch)

    def load(self, key: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The (augmented) uint8 image HxWx3 and mask HxW of one key, before normalisation."""
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), self.epoch)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        loaded = load_sample(self.samples[index], num_classes=self.num_classes, ignore_index=self.ignore_index)
        assert loaded.mask is not None
        image, mask = loaded.image, loaded.mask
        if self.augment_config is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, mask = augment(image, mask, self.augment_config, rng)
        return image, mask

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        image, mask = self.load(key)
        x = torch.from_numpy(normalize(image, self.mean, self.std))
        y = torch.from_numpy(mask.astype(np.int64))
        return x, y
