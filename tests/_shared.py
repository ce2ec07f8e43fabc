"""Helpers shared by tests in several folders (imported as ``from _shared import ...``; tests/ is on sys.path).

Not in a conftest.py: several folders have their own conftest, and ``import conftest`` would pick whichever came
first. ``perturb_`` lives in the package (:mod:`models.perturb`), where the benchmarks import it too.
"""

from __future__ import annotations

from models.perturb import perturb_

__all__ = ["perturb_"]
