"""The one exception a pass raises for a model it cannot process (the CLI turns it into exit status 1)."""

from __future__ import annotations


class PassError(Exception):
    """A model (or plan, or option) the pass cannot process; the message says what is wrong and what to do."""
