"""Facts of the LPCV 2023 task that every part of the toolchain reads from one place.

The exporter records ``MEAN``/``STD`` and the class names in each model's metadata; the data loader, the
evaluation and the device bundle read them back from there (or from here for a model without metadata).
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "avalanche",
    "building_undamaged",
    "building_damaged",
    "cracks_fissure_subsidence",
    "debris_mud_rock_flow",
    "fire_flare",
    "flood_water_river_sea",
    "ice_jam_flow",
    "lava_flow",
    "person",
    "pyroclastic_flow",
    "road_railway_bridge",
    "vehicle",
)
NUM_CLASSES: int = len(CLASS_NAMES)
IGNORE_INDEX: int = 255

# ImageNet normalisation, applied to RGB in [0, 1]: x = (rgb / 255 - MEAN) / STD.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# One RGB colour per class for overlays and device-side mask previews.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 230, 250),
    (70, 130, 180),
    (255, 140, 0),
    (139, 69, 19),
    (160, 82, 45),
    (255, 0, 0),
    (0, 105, 148),
    (175, 238, 238),
    (207, 16, 32),
    (255, 20, 147),
    (105, 105, 105),
    (128, 128, 0),
    (0, 255, 0),
)
