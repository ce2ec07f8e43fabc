"""The report every pass returns: what changed, size before and after, what was skipped and why."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fileformat.io import atomic_write_text


@dataclass
class SkipReason:
    """One part of the model the pass left alone, and why."""

    where: str
    reason: str


@dataclass
class PassReport:
    """Outcome of one pass.

    ``rows`` holds one dict per unit the pass looked at (a block, a layer); ``columns`` orders them in the table.
    ``params_*``/``flops_*`` count the whole model (FLOPs = 2 x multiply-accumulates, see ``graph_stats``).
    """

    pass_name: str
    modified: bool = False
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    skipped: list[SkipReason] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: set when the pass found nothing it can act on (the CLI then writes nothing and exits 1): why
    nothing_to_do: str | None = None

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append(SkipReason(where, reason))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> None:
        """Write the report as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    def _totals(self) -> str:
        return (
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({_ratio(self.params_after, self.params_before)}), "
            f"FLOPs {self.flops_before / 1e9:.3f}G -> {self.flops_after / 1e9:.3f}G "
            f"({_ratio(self.flops_after, self.flops_before)})"
        )

    def summary(self) -> str:
        """A few lines: what changed, the totals, skips counted by reason, notes (the CLI's default output)."""
        lines = [f"{self.pass_name}: {'modified' if self.modified else 'unchanged'}"]
        if self.rows:
            lines[0] += f" ({len(self.rows)} row(s) in the full report)"
        if self.params_before:
            lines.append(self._totals())
        if self.skipped:
            counts: dict[str, int] = {}
            for s in self.skipped:
                key = _clip_advice(re.sub(r"'[^']*'", "'…'", s.reason), 100)
                counts[key] = counts.get(key, 0) + 1
            lines.append(f"skipped {len(self.skipped)}:")
            for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
                lines.append(f"  {n} x {reason}")
            if len(counts) > 5:
                lines.append(f"  ... and {len(counts) - 5} other reason(s)")
        shown = 6  # e.g. one "kept FP32" note per LayerNorm chain: the rest goes to -v and --report
        lines.extend(_clip(n, 300) for n in self.notes[:shown])
        if len(self.notes) > shown:
            lines.append(f"... and {len(self.notes) - shown} more note(s)")
        if self.rows or self.skipped or len(self.notes) > shown:
            lines.append("details: -v, or --report FILE.json")
        return "\n".join(lines)

    def format(self) -> str:
        """A human-readable table of the rows (cells clipped to keep it readable), the totals and the skips."""
        lines = [f"{self.pass_name}: {'modified' if self.modified else 'unchanged'}"]
        if self.rows:
            cols = self.columns or list(self.rows[0])
            cells = [[_clip(_fmt(r.get(c, "")), 40) for c in cols] for r in self.rows]
            widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
            lines.append("  ".join("-" * w for w in widths))
            lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
        if self.params_before:
            lines.append(self._totals())
        for s in self.skipped:
            lines.append(f"skipped {s.where}: {s.reason}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _clip_advice(text: str, width: int) -> str:
    """:func:`_clip`, but never inside a command to paste (``python -m ...``): a reason clipped there ends before
    the command and says where the whole of it is."""
    at = text.find("python -m ")
    if len(text) <= width or at < 0 or at >= width:
        return _clip(text, width)
    return text[:at].rstrip(" (:") + " … (-v shows the command)"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}x" if b else "n/a"
