"""Synthetic UAV disaster scenes in the LPCV 2023 layout, for tests and for the default pipeline run.

``python -m models.synthetic ROOT --train 200 --val 50 --size 256 --seed 0`` writes::

    ROOT/IMG/{train,val}/syn_{split}_{i:05d}.png     RGB scene
    ROOT/GT/{train,val}/syn_{split}_{i:05d}.png      class ids 0..13 (single channel)
    ROOT/SYNTHETIC.json                              marker: parameters and class pixel shares

Every number measured on this data must say "synthetic" (``runtime.evaluate`` reads the marker).

A scene is painted in layers onto a textured terrain (class 0): one disaster theme chooses its large regions
(flood water, lava with pyroclastic flow and fire, debris/mud flows, avalanche snow and ice jams), shaped as noisy
blobs or as channels along a curve; then roads (thick polylines with lane marks), buildings (rotated rectangles;
damaged ones irregular with a rubble texture), cracks (thin random-walk curves), vehicles (mostly on roads) and
people (a few pixels each). Classes were given look-alikes on purpose (muddy flood water vs mud flow, snow vs ice,
pyroclastic grey vs road, fire vs lava, rubble vs debris) so that colour alone does not solve the task, and the
pixel shares are imbalanced like real disaster scenes (background largest; people and vehicles well under 1%).

Reproducibility: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split_id, i])`` only, and
PNGs are written by PIL with fixed settings and no metadata, so the same seed gives byte-identical files (and the
first images of a larger set equal those of a smaller one).

Generator versions (``--generator-version``; the marker and every report built on the data state it):

* **1** scales every object with the frame, so at 128 px a person is a disc of 1-2 pixels and a crack a 1-pixel line:
  no model learns them (0 IoU at any schedule), and colour alone separates most classes.
* **2** (default) keeps small things learnable and makes the look-alikes need context: people, vehicles and cracks
  have a floor in pixels (a person at least 3 px across, a vehicle 6x3 px with a dark windscreen, cracks 2 px
  wide, branching and more frequent), with person-sized bushes and stones as background distractors; debris and
  rubble share one texture per scene (only the shape, a flow or a building footprint, tells them apart), the
  pyroclastic flow takes the road's grey (lane marks and straight edges tell a road), ice takes the snow's
  colour, lava's glow takes the fire's colours, and drifting cloud shadows change the light across a scene.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fileformat.args import Parser, check_output_folder, int_in, non_negative_int, positive_int
from fileformat.cli import cli_main
from fileformat.errors import PassError
from fileformat.io import check_replaceable, umask_mode, write_manifest
from models.constants import CLASS_NAMES, NUM_CLASSES

__all__ = ["MARKER", "GENERATOR_VERSION", "GENERATOR_VERSIONS", "generate", "render_scene", "main"]

logger = logging.getLogger(__name__)

MARKER = "SYNTHETIC.json"
MAX_SIZE = 4096  # an image side above it is a typo (99999999 px asked for 35 PiB), not a data set
GENERATOR_VERSION = 2
GENERATOR_VERSIONS = (1, 2)
SPLIT_IDS = {"train": 0, "val": 1}

# class ids (see models.constants.CLASS_NAMES)
BG, AVALANCHE, BUILDING, BUILDING_DMG, CRACK, DEBRIS, FIRE, WATER, ICE, LAVA, PERSON, PYRO, ROAD, VEHICLE = range(14)

Array = np.ndarray


# --------------------------------------------------------------------------------------------------- noise


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int) -> Array:
    """Value noise in [0, 1]: a ``cells x cells`` random grid upsampled bicubically to ``h x w`` (float32)."""
    grid = Image.fromarray(rng.random((cells + 1, cells + 1), dtype=np.float32), mode="F")
    out = np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def _fbm(rng: np.random.Generator, h: int, w: int, base: int, octaves: int = 3) -> Array:
    """Fractal noise: ``sum_k 0.5^k noise(base * 2^k)``, rescaled to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight = 0.0
    for k in range(octaves):
        total += (0.5**k) * _smooth(rng, h, w, base * 2**k)
        weight += 0.5**k
    total /= weight
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _grain(rng: np.random.Generator, h: int, w: int) -> Array:
    """Per-pixel uniform noise in [-1, 1]."""
    return rng.random((h, w), dtype=np.float32) * 2.0 - 1.0


def _mix(a: Sequence[float], b: Sequence[float], t: Array) -> Array:
    """``a + (b - a) * t`` per pixel: HxW weights -> HxWx3 colours."""
    a_ = np.asarray(a, np.float32)
    b_ = np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float = 18.0) -> tuple[float, float, float]:
    c = np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)
    return tuple(float(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- textures

# Each texture function returns an HxWx3 float32 image (0..255) for the whole frame; the painter copies it where
# the class's shape is.


def _tex_terrain(rng: np.random.Generator, h: int, w: int) -> Array:
    veg = _jitter(rng, (78, 110, 55), 20)
    soil = _jitter(rng, (150, 130, 95), 20)
    t = _fbm(rng, h, w, 4)
    img = _mix(veg, soil, np.clip((t - 0.3) * 2.0, 0, 1))
    img *= (0.85 + 0.3 * _smooth(rng, h, w, 16))[..., None]
    img += 8.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_water(rng: np.random.Generator, h: int, w: int) -> Array:
    muddy = rng.random()
    deep = _mix((35, 75, 120), (115, 100, 70), np.full((h, w), muddy, np.float32))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    phase = np.cos(theta) * xx + np.sin(theta) * yy
    ripple = np.sin(phase * 0.45 + 6.0 * _smooth(rng, h, w, 6)) * 0.5 + 0.5
    img = deep * (0.9 + 0.15 * ripple)[..., None] + 12.0 * _smooth(rng, h, w, 3)[..., None]
    img += 3.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_lava(rng: np.random.Generator, h: int, w: int) -> Array:
    n = _fbm(rng, h, w, 6)
    vein = np.clip(1.0 - np.abs(n - 0.5) / 0.06, 0, 1)
    img = _mix(_jitter(rng, (45, 25, 25), 10), (240, 90, 20), vein**1.5)
    img += 10.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_fire(rng: np.random.Generator, h: int, w: int) -> Array:
    n = np.clip(0.6 * _smooth(rng, h, w, 24) + 0.4 * rng.random((h, w), dtype=np.float32), 0, 1)
    img = _mix((200, 40, 10), (255, 225, 90), n)
    smoke = _smooth(rng, h, w, 5)
    img = img * (1 - 0.35 * smoke[..., None]) + 0.35 * smoke[..., None] * 90.0
    return img


def _tex_debris(rng: np.random.Generator, h: int, w: int) -> Array:
    mud = _jitter(rng, (115, 88, 60), 15)
    img = _mix(mud, (150, 140, 125), _smooth(rng, h, w, 12))
    rocks = rng.random((h, w), dtype=np.float32) < 0.06
    img[rocks] = np.asarray(_jitter(rng, (110, 105, 100), 25), np.float32)
    img += 22.0 * _grain(rng, h, w)[..., None]
    return img


def _ice_plates(
    rng: np.random.Generator, h: int, w: int, colours: tuple[tuple, float, tuple, tuple], seam: float, grain: float
) -> Array:
    """Floating plates: ``colours`` = (light colour, its jitter, dark plate colour, seam colour)."""
    light, jitter, dark, seam_colour = colours
    n = _smooth(rng, h, w, 14)
    plates = np.floor(n * 5.0) / 5.0
    edges = np.clip(1.0 - np.abs(n * 5.0 - np.round(n * 5.0)) / 0.12, 0, 1)
    img = _mix(_jitter(rng, light, jitter), dark, plates)
    img = img * (1 - seam * edges[..., None]) + seam * edges[..., None] * np.asarray(seam_colour, np.float32)
    img += grain * _grain(rng, h, w)[..., None]
    return img


def _tex_ice(rng: np.random.Generator, h: int, w: int) -> Array:
    return _ice_plates(rng, h, w, ((200, 222, 232), 10, (150, 180, 200), (60, 80, 100)), 0.5, 4.0)


def _tex_snow(rng: np.random.Generator, h: int, w: int) -> Array:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    flow = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * 0.25 + 3.0 * _smooth(rng, h, w, 8))
    img = np.zeros((h, w, 3), np.float32) + np.asarray(_jitter(rng, (236, 238, 242), 6), np.float32)
    img *= (0.88 + 0.06 * flow + 0.06 * _smooth(rng, h, w, 4))[..., None]
    img += 3.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_pyro(rng: np.random.Generator, h: int, w: int) -> Array:
    n = _fbm(rng, h, w, 5, octaves=4)
    img = _mix(_jitter(rng, (95, 90, 88), 10), (175, 170, 165), n)
    img += 5.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_road(rng: np.random.Generator, h: int, w: int) -> Array:
    base = _jitter(rng, (92, 92, 96), 12)
    img = np.zeros((h, w, 3), np.float32) + np.asarray(base, np.float32)
    img *= (0.93 + 0.1 * _smooth(rng, h, w, 10))[..., None]
    img += 4.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_rubble(rng: np.random.Generator, h: int, w: int) -> Array:
    frag = _smooth(rng, h, w, max(8, w // 6))
    img = _mix(_jitter(rng, (125, 105, 90), 20), _jitter(rng, (175, 170, 160), 20), frag)
    img += 30.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_lava_v2(rng: np.random.Generator, h: int, w: int) -> Array:
    """Version 2: dark crust cracked by veins that glow in the fire's own colours (only shape tells them apart)."""
    n = _fbm(rng, h, w, 6)
    vein = np.clip(1.0 - np.abs(n - 0.5) / 0.12, 0, 1)
    glow = _mix((200, 40, 10), (255, 225, 90), _smooth(rng, h, w, 20))
    crust = np.zeros((h, w, 3), np.float32) + np.asarray(_jitter(rng, (60, 32, 26), 10), np.float32)
    img = crust * (1.0 - vein[..., None]) + glow * vein[..., None]
    img += 10.0 * _grain(rng, h, w)[..., None]
    return img


def _tex_ice_v2(rng: np.random.Generator, h: int, w: int) -> Array:
    """Version 2: plates in the snow's colour; only their darker seams and the river they float on differ."""
    return _ice_plates(rng, h, w, ((236, 238, 242), 6, (205, 214, 224), (150, 165, 180)), 0.35, 3.0)


def _tex_pyro_v2(rng: np.random.Generator, h: int, w: int) -> Array:
    """Version 2: the road's grey, mottled; a road is told by its lane marks and straight edges."""
    n = _fbm(rng, h, w, 5, octaves=4)
    img = _mix(_jitter(rng, (88, 88, 92), 10), (128, 126, 124), n)
    img += 5.0 * _grain(rng, h, w)[..., None]
    return img


ROOF_COLOURS = ((170, 70, 55), (120, 120, 125), (70, 95, 140), (200, 185, 150), (90, 70, 60))


# --------------------------------------------------------------------------------------------------- shapes


def _blob(rng: np.random.Generator, h: int, w: int, fraction: float, cells: int = 3) -> Array:
    """A noisy region covering about ``fraction`` of the frame (bool HxW): thresholded fractal noise."""
    n = _fbm(rng, h, w, cells, octaves=3)
    thr = np.partition(n.reshape(-1), int((1.0 - fraction) * (n.size - 1)))[int((1.0 - fraction) * (n.size - 1))]
    return n > thr


def _curve(rng: np.random.Generator, h: int, w: int, points: int = 5) -> list[tuple[float, float]]:
    """A smooth-ish random curve crossing the frame (list of (x, y) vertices)."""
    side = rng.integers(0, 2)
    t = np.linspace(-0.1, 1.1, points)
    wobble = np.cumsum(rng.normal(0, 0.12, points))
    start = rng.uniform(0.15, 0.85)
    if side == 0:
        xs, ys = t * w, (start + wobble) * h
    else:
        xs, ys = (start + wobble) * w, t * h
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def _band(rng: np.random.Generator, h: int, w: int, width: float) -> Array:
    """A channel (river, lava or mud flow) along a random curve with a noisy edge (bool HxW)."""
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).line(_curve(rng, h, w), fill=255, width=max(1, int(width)), joint="curve")
    blurred = np.asarray(im.filter(ImageFilter.GaussianBlur(width / 4)), np.float32) / 255.0
    return blurred + 0.35 * (_smooth(rng, h, w, 10) - 0.5) > 0.5


def _draw(h: int, w: int, fn: Callable[[ImageDraw.ImageDraw], None]) -> Array:
    im = Image.new("L", (w, h), 0)
    fn(ImageDraw.Draw(im))
    return np.asarray(im) > 0


def _rect(cx: float, cy: float, rw: float, rh: float, angle: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    pts = []
    for dx, dy in ((-rw, -rh), (rw, -rh), (rw, rh), (-rw, rh)):
        pts.append((cx + (dx * c - dy * s) / 2, cy + (dx * s + dy * c) / 2))
    return pts


# ---------------------------------------------------------------------------------------------------- scenes


class _Canvas:
    """The image being painted and its label map."""

    def __init__(self, rng: np.random.Generator, size: int, version: int = GENERATOR_VERSION) -> None:
        self.rng = rng
        self.version = version
        self.h = self.w = size
        self.u = size / 256.0  # scale of object sizes relative to a 256-pixel frame
        self.img = _tex_terrain(rng, size, size)
        self.mask = np.zeros((size, size), np.uint8)
        self._rubble: Array | None = None

    def px(self, size: float, floor: float) -> float:
        """An object size given for a 256-pixel frame, in pixels of this one; version 2 keeps it >= ``floor``."""
        return size * self.u if self.version < 2 else max(size * self.u, floor)

    def rubble(self) -> Array:
        """The scene's rubble texture, made once (version 2 paints debris flows with it as well)."""
        if self._rubble is None:
            self._rubble = _tex_rubble(self.rng, self.h, self.w)
        return self._rubble

    def paint(self, where: Array, cls: int, texture: Array | Sequence[float]) -> None:
        if not where.any():
            return
        tex = np.asarray(texture, np.float32)
        self.img[where] = tex[where] if tex.ndim == 3 else tex
        self.mask[where] = cls

    def paint_pixels(self, where: Array, cls: int, colours: Array) -> None:
        """Like :meth:`paint` with one colour per selected pixel (``colours`` is ``where.sum() x 3``)."""
        self.img[where] = colours
        self.mask[where] = cls


_REGION_TEXTURES: dict[int, Callable[[np.random.Generator, int, int], Array]] = {
    WATER: _tex_water,
    LAVA: _tex_lava,
    FIRE: _tex_fire,
    DEBRIS: _tex_debris,
    ICE: _tex_ice,
    AVALANCHE: _tex_snow,
    PYRO: _tex_pyro,
}

# theme -> list of (class, probability, coverage range, shape: "blob" | "band")
_THEMES: dict[str, list[tuple[int, float, tuple[float, float], str]]] = {
    "flood": [(WATER, 1.0, (0.2, 0.5), "blob"), (DEBRIS, 0.3, (0.03, 0.1), "band")],
    "river": [(WATER, 1.0, (0.08, 0.2), "band"), (ICE, 0.25, (0.04, 0.12), "blob")],
    "volcano": [(LAVA, 0.9, (0.08, 0.25), "band"), (PYRO, 0.7, (0.1, 0.3), "blob"), (FIRE, 0.5, (0.02, 0.08), "blob")],
    "wildfire": [(FIRE, 1.0, (0.05, 0.2), "blob"), (DEBRIS, 0.2, (0.03, 0.08), "blob")],
    "landslide": [(DEBRIS, 1.0, (0.1, 0.3), "band"), (WATER, 0.3, (0.03, 0.1), "band")],
    "winter": [(AVALANCHE, 0.9, (0.12, 0.35), "band"), (ICE, 0.7, (0.06, 0.2), "band")],
    "earthquake": [(DEBRIS, 0.5, (0.03, 0.1), "blob")],
}
_REGION_TEXTURES_V2 = {**_REGION_TEXTURES, LAVA: _tex_lava_v2, ICE: _tex_ice_v2, PYRO: _tex_pyro_v2}
_THEME_NAMES = tuple(_THEMES)
_THEME_P = np.array([0.22, 0.12, 0.14, 0.12, 0.12, 0.12, 0.16])


def _regions(cv: _Canvas, theme: str) -> None:
    rng, h, w = cv.rng, cv.h, cv.w
    for cls, p, (lo, hi), shape in _THEMES[theme]:
        if rng.random() >= p:
            continue
        frac = float(rng.uniform(lo, hi))
        if shape == "blob":
            where = _blob(rng, h, w, frac, cells=int(rng.integers(2, 5)))
        else:
            where = _band(rng, h, w, width=frac * w * 1.2)
        if cv.version < 2:
            cv.paint(where, cls, _REGION_TEXTURES[cls](rng, h, w))
        else:
            cv.paint(where, cls, cv.rubble() if cls == DEBRIS else _REGION_TEXTURES_V2[cls](rng, h, w))


def _roads(cv: _Canvas, n: int) -> list[list[tuple[float, float]]]:
    rng, h, w = cv.rng, cv.h, cv.w
    roads = []
    tex = _tex_road(rng, h, w)
    for _ in range(n):
        pts = _curve(rng, h, w, points=int(rng.integers(2, 5)))
        width = int(rng.uniform(7, 15) * cv.u)
        cv.paint(_draw(h, w, lambda d, p=pts, wd=width: d.line(p, fill=255, width=wd, joint="curve")), ROAD, tex)
        # dashed centre line, still labelled road
        lane = _draw(h, w, lambda d, p=pts: d.line(p, fill=255, width=max(1, int(cv.u))))
        dash = (np.add.outer(np.arange(h), np.arange(w)) // max(3, int(6 * cv.u))) % 2 == 0
        cv.paint(lane & dash & (cv.mask == ROAD), ROAD, _jitter(rng, (225, 215, 150), 20))
        roads.append(pts)
    return roads


def _buildings(cv: _Canvas, n: int, damaged_share: float) -> list[tuple[float, float]]:
    rng, h, w, u = cv.rng, cv.h, cv.w, cv.u
    centres = []
    rubble: Array | None = None
    standing: Array | None = None
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        bw, bh = rng.uniform(12, 36) * u, rng.uniform(10, 28) * u
        angle = rng.uniform(0, np.pi)
        roof = np.asarray(_jitter(rng, ROOF_COLOURS[int(rng.integers(len(ROOF_COLOURS)))], 15), np.float32)
        centres.append((float(cx), float(cy)))
        if rng.random() < damaged_share:
            pts = [(x + rng.normal(0, 3 * u), y + rng.normal(0, 3 * u)) for x, y in _rect(cx, cy, bw, bh, angle)]
            where = _draw(h, w, lambda d, p=pts: d.polygon(p, fill=255))
            if rubble is None:
                rubble = _tex_rubble(rng, h, w) if cv.version < 2 else cv.rubble()
                standing = _smooth(rng, h, w, max(6, w // 10)) > 0.65  # fragments of roof left standing
            colours = rubble[where]
            keep = standing[where]  # type: ignore[index]
            colours[keep] = 0.7 * colours[keep] + 0.3 * roof
            cv.paint_pixels(where, BUILDING_DMG, colours)
        else:
            where = _draw(h, w, lambda d, p=_rect(cx, cy, bw, bh, angle): d.polygon(p, fill=255))
            # gable roof: the two halves on either side of the ridge differ in brightness; the ridge is darker
            ys, xs = np.nonzero(where)
            shade = np.where((xs - cx) * -np.sin(angle) + (ys - cy) * np.cos(angle) > 0, 0.8, 1.0)
            dx, dy = np.cos(angle) * bw / 2, np.sin(angle) * bw / 2
            ridge = _draw(h, w, lambda d, r=[(cx - dx, cy - dy), (cx + dx, cy + dy)]: d.line(r, fill=255, width=1))
            shade = shade * np.where(ridge[ys, xs], 0.7, 1.0)
            cv.paint_pixels(where, BUILDING, roof[None, :] * shade[:, None].astype(np.float32))
    return centres


def _walk(cv: _Canvas, x: float, y: float, heading: float, steps: int) -> list[tuple[float, float]]:
    """A random walk of ``steps`` segments from ``(x, y)``: the centre line of a crack."""
    pts = [(float(x), float(y))]
    for _ in range(steps):
        heading += cv.rng.normal(0, 0.45)
        step = cv.px(cv.rng.uniform(3, 7), 2.0)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        pts.append((float(x), float(y)))
    return pts


def _cracks(cv: _Canvas, n: int) -> None:
    rng, h, w, u = cv.rng, cv.h, cv.w, cv.u
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        lines = [_walk(cv, x, y, rng.uniform(0, 2 * np.pi), int(rng.integers(8, 20)))]
        if cv.version < 2:
            width = max(1, int(round(rng.uniform(1, 3) * u)))
        else:
            width = max(2, int(round(rng.uniform(1, 3) * u)))
            for _ in range(int(rng.integers(0, 3))):  # branches from a point of the main line
                bx, by = lines[0][int(rng.integers(1, len(lines[0])))]
                lines.append(_walk(cv, bx, by, rng.uniform(0, 2 * np.pi), int(rng.integers(4, 10))))

        def stroke(d: ImageDraw.ImageDraw, lines: list = lines, wd: int = width) -> None:
            for p in lines:
                d.line(p, fill=255, width=wd)

        cv.paint(_draw(h, w, stroke), CRACK, _jitter(rng, (45, 38, 32), 10))


def _vehicles(cv: _Canvas, n: int, roads: list[list[tuple[float, float]]]) -> None:
    rng, h, w = cv.rng, cv.h, cv.w
    for _ in range(n):
        if roads and rng.random() < 0.8:
            pts = roads[int(rng.integers(len(roads)))]
            k = int(rng.integers(len(pts) - 1))
            t = rng.random()
            (x0, y0), (x1, y1) = pts[k], pts[k + 1]
            cx, cy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            angle = float(np.arctan2(y1 - y0, x1 - x0))
        else:
            cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi)
        colour = _jitter(
            rng, ((230, 230, 230), (200, 30, 30), (30, 30, 35), (40, 80, 180), (220, 200, 40))[int(rng.integers(5))], 15
        )
        length, width = cv.px(rng.uniform(5, 8), 6.0), cv.px(rng.uniform(2.5, 4), 3.0)
        pts_v = _rect(cx, cy, length, width, angle)
        cv.paint(_draw(h, w, lambda d, p=pts_v: d.polygon(p, fill=255)), VEHICLE, colour)
        if cv.version >= 2:  # a dark windscreen across the front third
            fx, fy = cx + 0.25 * length * np.cos(angle), cy + 0.25 * length * np.sin(angle)
            screen = _draw(h, w, lambda d, p=_rect(fx, fy, length / 4, width, angle): d.polygon(p, fill=255))
            cv.paint(screen & (cv.mask == VEHICLE), VEHICLE, _jitter(rng, (35, 40, 50), 8))


def _people(cv: _Canvas, n: int, anchors: list[tuple[float, float]]) -> None:
    rng, h, w, u = cv.rng, cv.h, cv.w, cv.u
    for _ in range(n):
        if anchors and rng.random() < 0.6:
            ax, ay = anchors[int(rng.integers(len(anchors)))]
            cx, cy = ax + rng.normal(0, 18 * u), ay + rng.normal(0, 18 * u)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = cv.px(rng.uniform(1.0, 2.0), 1.5)
        colour = _jitter(rng, ((250, 90, 20), (240, 240, 60), (30, 120, 230), (220, 40, 120))[int(rng.integers(4))], 20)
        cv.paint(_draw(h, w, lambda d, b=(cx - r, cy - r, cx + r, cy + r): d.ellipse(b, fill=255)), PERSON, colour)


def _distractors(cv: _Canvas, n: int) -> None:
    """Version 2: person-sized bushes and stones on open ground, labelled background."""
    rng, h, w = cv.rng, cv.h, cv.w
    for _ in range(n):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), cv.px(rng.uniform(1.0, 2.5), 1.5)
        colour = _jitter(rng, ((40, 72, 30), (128, 124, 118), (95, 70, 45))[int(rng.integers(3))], 15)
        where = _draw(h, w, lambda d, b=(cx - r, cy - r, cx + r, cy + r): d.ellipse(b, fill=255))
        cv.paint(where & (cv.mask == BG), BG, colour)


def _check_version(version: int) -> None:
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown generator version {version}; known: {', '.join(map(str, GENERATOR_VERSIONS))}")


def render_scene(rng: np.random.Generator, size: int = 256, version: int = GENERATOR_VERSION) -> tuple[Array, Array]:
    """Paint one scene: returns ``(image HxWx3 uint8, mask HxW uint8)`` with ``H = W = size``.

    ``version`` selects the generator (see the module's notes); version 1 stays byte-identical to what it wrote.
    """
    _check_version(version)
    cv = _Canvas(rng, size, version)
    theme = _THEME_NAMES[int(rng.choice(len(_THEME_NAMES), p=_THEME_P))]
    roads_first = rng.random() < 0.5
    roads: list[list[tuple[float, float]]] = []
    n_roads = int(rng.integers(0, 3))
    if roads_first:
        roads = _roads(cv, n_roads)
    _regions(cv, theme)
    if not roads_first:
        roads = _roads(cv, n_roads)
    damaged = {"earthquake": 0.7, "landslide": 0.4, "flood": 0.25, "volcano": 0.3, "wildfire": 0.35}.get(theme, 0.1)
    n_build = int(rng.integers(1, 12 if theme == "earthquake" else 8))
    anchors = _buildings(cv, n_build, damaged)
    if version < 2:
        n_cracks = int(rng.integers(2, 6)) if theme == "earthquake" else int(rng.random() < 0.2)
    else:
        n_cracks = {"earthquake": int(rng.integers(3, 8)), "landslide": int(rng.integers(1, 4))}.get(
            theme, int(rng.random() < 0.4)
        )
    _cracks(cv, n_cracks)
    if version >= 2:
        _distractors(cv, int(rng.integers(2, 10)))
    _vehicles(cv, int(rng.integers(0, 5)), roads)
    _people(cv, int(rng.integers(0, 7)), anchors)
    # acquisition: illumination ramp, colour cast, sensor noise
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    light = 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5)
    if version >= 2:  # cloud shadows
        light = light * (1.0 - 0.3 * np.clip((_smooth(rng, h, w, 3) - 0.55) * 4.0, 0.0, 1.0))
    cast = 1.0 + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    img = cv.img * light[..., None] * cast + rng.uniform(2, 6) * _grain(rng, h, w)[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), cv.mask


# ----------------------------------------------------------------------------------------------------- writing


def _save_png(arr: Array, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, optimize=False)


def _render_and_save(args: tuple[Path, str, int, int, int, str, int]) -> np.ndarray:
    """Worker: render image ``i`` of a split and write its PNGs; return its class pixel counts."""
    root, split, i, size, seed, mask_dir, version = args
    rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
    image, mask = render_scene(rng, size, version)
    name = f"syn_{split}_{i:05d}.png"
    _save_png(image, root / "IMG" / split / name)
    _save_png(mask, root / mask_dir / split / name)
    return np.bincount(mask.reshape(-1), minlength=NUM_CLASSES)[:NUM_CLASSES]


def _write_split(
    root: Path, split: str, count: int, size: int, seed: int, mask_dir: str, version: int, pool: Executor | None
) -> np.ndarray:
    (root / "IMG" / split).mkdir(parents=True)
    (root / mask_dir / split).mkdir(parents=True)
    jobs = [(root, split, i, size, seed, mask_dir, version) for i in range(count)]
    if pool is None:
        counts = map(_render_and_save, jobs)
    else:
        counts = pool.map(_render_and_save, jobs, chunksize=max(1, count // 32))
    pixels = np.zeros(NUM_CLASSES, np.int64)
    for c in counts:
        pixels += c
    return pixels


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove the temporary folders (``.ROOT.tmp-PID-*``, ``.ROOT.old-PID-*``) that a killed run of ``root`` left
    beside it; a folder whose process is still alive is kept (a run in progress). Folders from before the PID was in
    the name are removed. Returns what was removed."""
    removed = []
    for stale in list(root.parent.glob(f".{root.name}.tmp-*")) + list(root.parent.glob(f".{root.name}.old-*")):
        pid = stale.name.split(".tmp-" if ".tmp-" in stale.name else ".old-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    if removed:
        logger.info("removed %d folder(s) a killed run left: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def generate(
    root: Path | str,
    n_train: int = 200,
    n_val: int = 50,
    size: int = 256,
    seed: int = 0,
    *,
    force: bool = False,
    mask_dir: str = "GT",
    workers: int | None = None,
    version: int = GENERATOR_VERSION,
) -> dict:
    """Write a synthetic set to ``root`` and return the marker's content.

    Written into a temporary sibling folder and renamed into place at the end, so ``root`` is never left
    half-written. An existing non-empty ``root`` is an error (``FileExistsError``) unless ``force``, which replaces
    it. ``mask_dir`` may be ``"GT"`` or ``"GT_Updated"`` (the official archive's name). ``workers`` processes
    render in parallel (default: the CPU count for sets of 64 images or more, else 1); the output does not depend
    on it. ``version`` selects the generator (1 or 2, see the module's notes).
    """
    root = Path(root)
    if not 32 <= size <= MAX_SIZE:
        raise ValueError(f"size must be 32 to {MAX_SIZE} pixels, got {size}")
    if n_train < 0 or n_val < 0:
        raise ValueError("image counts must be non-negative")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_version(version)
    if mask_dir not in ("GT", "GT_Updated"):
        raise ValueError(f"mask_dir must be 'GT' or 'GT_Updated', got {mask_dir!r}")
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    try:
        check_replaceable(root, force, "ROOT")
    except PassError as exc:
        raise FileExistsError(str(exc)) from exc
    root.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-{os.getpid()}-", dir=root.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp's 0700 would outlive the rename
    try:
        t0 = time.perf_counter()
        stats = {}
        if workers is None:
            workers = min(os.cpu_count() or 1, 8) if n_train + n_val >= 64 else 1
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        try:
            pixel_counts = {
                split: _write_split(tmp, split, count, size, seed, mask_dir, version, pool)
                for split, count in (("train", n_train), ("val", n_val))
            }
        finally:
            if pool is not None:
                pool.shutdown()
        for split, count in (("train", n_train), ("val", n_val)):
            pixels = pixel_counts[split]
            total = max(int(pixels.sum()), 1)
            stats[split] = {
                "images": count,
                "class_pixel_share": {n: round(int(p) / total, 6) for n, p in zip(CLASS_NAMES, pixels)},
            }
        marker = {
            "generator": "models.synthetic",
            "version": version,
            "seed": seed,
            "size": [size, size],
            "mask_dir": mask_dir,
            "classes": list(CLASS_NAMES),
            "splits": stats,
            "note": "synthetic data: numbers measured on it are not LPCV 2023 results",
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        write_manifest(tmp, "models.synthetic")
        logger.info("rendered %d images in %.1f s", n_train + n_val, time.perf_counter() - t0)
        if root.exists():
            if any(root.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-{os.getpid()}-", dir=root.parent))
                old.rmdir()
                root.rename(old)
                tmp.rename(root)
                shutil.rmtree(old)
            else:
                root.rmdir()
                tmp.rename(root)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return marker


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m models.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    parser.add_argument("root", type=Path, help="output folder (LPCV layout)")
    parser.add_argument("--train", type=non_negative_int, default=200, help="training images")
    parser.add_argument("--val", type=non_negative_int, default=50, help="validation images")
    parser.add_argument(
        "--size", type=int_in(32, MAX_SIZE, "pixels per side"), default=256, help="image side in pixels"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the scenes (>= 0), same seed same files (default: %(default)s)",
    )
    parser.add_argument("--mask-dir", choices=("GT", "GT_Updated"), default="GT", help="name of the mask folder")
    parser.add_argument("--force", action="store_true", help="replace a non-empty ROOT this tool wrote")
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="render processes (none given: the CPU count)"
    )
    parser.add_argument(
        "--generator-version",
        type=int,
        choices=GENERATOR_VERSIONS,
        default=GENERATOR_VERSION,
        help="scene generator: 2 keeps people, vehicles and cracks learnable at small sizes and makes look-alike "
        "classes need context; 1 reproduces data written before it",
    )
    return parser


@cli_main("python -m models.synthetic")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m models.synthetic ROOT --train 200 --val 50 --size 256 --seed 0 [--force]``: 0 written,
    1 refused (ROOT holds files this tool did not write), 2 usage error (ROOT exists without --force included)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.train + args.val < 1:
        parser.error("--train and --val: give at least one image")
    check_output_folder("ROOT", args.root)
    check_replaceable(args.root, args.force, "ROOT")  # before any image is drawn
    marker = generate(
        args.root,
        args.train,
        args.val,
        args.size,
        args.seed,
        force=args.force,
        mask_dir=args.mask_dir,
        workers=args.workers,
        version=args.generator_version,
    )
    share = marker["splits"]["train" if args.train else "val"]["class_pixel_share"]
    print(
        f"wrote synthetic LPCV layout to {args.root} ({args.train} train, {args.val} val, {args.size}px, "
        f"generator version {args.generator_version})"
    )
    print("class pixel share: " + ", ".join(f"{k} {v:.2%}" for k, v in share.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
