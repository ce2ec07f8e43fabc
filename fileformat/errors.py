"""The exceptions a pass raises for what it cannot process; the CLI turns them into exit statuses 1 and 2."""

from __future__ import annotations


class PassError(Exception):
    """A model (or plan, or option) the pass cannot process; the message says what is wrong and what to do."""


class UsageError(PassError):
    """An option out of its range or options that contradict each other: a usage error (exit status 2)."""
