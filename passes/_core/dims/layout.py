"""How a unit axis is laid out: factors, :class:`Parts`, :class:`Dim`, and the positions a set of units takes.

An axis of size ``n`` holds a row-major product of factors ``((s_1, u_1), ..., (s_m, u_m))``, ``n = prod(s_i)``,
where ``u_i`` says whether factor ``i`` is the unit factor (``True``), a carried factor (``False``) or a
:class:`Parts` factor (unequal parts, some holding their own copy of the unit). Entry ``(i_1, ..., i_m)`` of the
factors is index ``sum_k i_k * prod_{j > k} s_j`` of the axis.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parts:
    """An axis factor made of consecutive parts of unequal sizes (LeViT's fused ``[q | k | v]`` per head, split
    16/16/32): a part is a layout that holds the unit (its own copy of it), or an ``int``, a run of entries that the
    unit does not touch and that stay whole. As a factor it is ``(size, Parts(...))``: it holds the unit, so a
    reshape never splits it."""

    parts: tuple[Layout | int, ...]


def part_size(part: Layout | int) -> int:
    """Entries of one part of a :class:`Parts` factor."""
    return part if isinstance(part, int) else layout_size(part)


Factor = tuple[int, "bool | Parts"]
Layout = tuple[Factor, ...]


def norm_axis(axis: int, rank: int) -> int:
    """A possibly negative ONNX axis as ``0 .. rank - 1``."""
    return axis + rank if axis < 0 else axis


def canonical(layout: Sequence[Factor]) -> Layout:
    """Merge adjacent carried factors and drop carried factors of size 1 (unit factors are kept as they are)."""
    out: list[Factor] = []
    for size, unit in layout:
        if not unit and size == 1:
            continue
        if out and not unit and not out[-1][1]:
            out[-1] = (out[-1][0] * size, False)
        else:
            out.append((int(size), unit if isinstance(unit, Parts) else bool(unit)))
    return tuple(out)


def _factor_size(size: int, unit: bool | Parts, kept: int | None) -> int:
    if kept is None or not unit:
        return int(size)
    if isinstance(unit, Parts):
        return sum(p if isinstance(p, int) else layout_size(p, kept) for p in unit.parts)
    return kept


def layout_size(layout: Layout, kept: int | None = None) -> int:
    """Size of an axis with this layout; with ``kept``, the size after keeping ``kept`` units."""
    return int(np.prod([_factor_size(s, unit, kept) for s, unit in layout]))


def unit_share(layout: Layout) -> float:
    """The fraction of the axis that belongs to some unit (1 unless a :class:`Parts` holds untouched runs)."""
    return 1.0 - layout_size(layout, 0) / layout_size(layout)


def unit_count(layout: Layout) -> int:
    """The number of units the layout holds (the size of its unit factor, inside a :class:`Parts` if need be)."""
    s, unit = next(f for f in layout if f[1])
    if isinstance(unit, Parts):
        return unit_count(next(p for p in unit.parts if not isinstance(p, int)))
    return s


def unit_copies(layout: Layout) -> int:
    """How many parts of the axis hold a copy of the unit (2 for LeViT's fused q and k; else 1)."""
    unit = next(u for _, u in layout if u)
    if isinstance(unit, Parts):
        return sum(unit_copies(p) for p in unit.parts if not isinstance(p, int))
    return 1


def unit_inner(layout: Layout) -> int:
    """Product of the factors after the unit factor (the head dimension of ``(heads, head_dim)``)."""
    i = next(k for k, (_, unit) in enumerate(layout) if unit)
    return int(np.prod([s for s, _ in layout[i + 1 :]])) if i + 1 < len(layout) else 1


def _positions(layout: Layout, units: Sequence[int], whole: bool) -> np.ndarray:
    """Row-major indices along an axis of ``layout`` of the entries of ``units`` (in that order); with ``whole``,
    also the entries of every :class:`Parts` run that no unit touches."""
    idx = np.zeros(1, dtype=np.int64)
    for size, unit in layout:
        if not unit:
            local = np.arange(size, dtype=np.int64)
        elif isinstance(unit, Parts):
            chunks, offset = [], 0
            for p in unit.parts:
                n = part_size(p)
                if not isinstance(p, int):
                    chunks.append(offset + _positions(p, units, whole))
                elif whole:
                    chunks.append(offset + np.arange(n, dtype=np.int64))
                offset += n
            local = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        else:
            local = np.asarray(list(units), dtype=np.int64)
        idx = (idx[:, None] * size + local[None, :]).reshape(-1)
    return idx


@functools.lru_cache(maxsize=1 << 16)
def _positions_of(layout: Layout, units: tuple[int, ...], whole: bool) -> np.ndarray:
    """:func:`_positions`, read-only and remembered: importance asks for every unit of every tensor of a group, on
    each discovery of a model that many passes and latency attempts discover again."""
    out = _positions(layout, units, whole)
    out.setflags(write=False)
    return out


def kept_positions(layout: Layout, kept: Sequence[int]) -> np.ndarray:
    """Indices along an axis of this layout that remain when the units ``kept`` are kept (in order; read-only)."""
    return _positions_of(layout, tuple(int(u) for u in kept), True)


def unit_positions(layout: Layout, units: Sequence[int]) -> np.ndarray:
    """Indices along an axis of this layout that belong to ``units`` (what zeroing them zeroes; read-only)."""
    return _positions_of(layout, tuple(int(u) for u in units), False)


@dataclass(frozen=True)
class Dim:
    """The unit axis of one tensor: which axis, and how its index decomposes."""

    axis: int
    layout: Layout

    @property
    def size(self) -> int:
        return layout_size(self.layout)
