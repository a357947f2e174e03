"""The base class of every user error: what ``coop-rl`` reports in one line on stderr with exit status 2.

A user error is a mistake in what was asked for (a bad recipe or setting, an unknown demo, a missing checkpoint),
as opposed to a bug. Modules raise a ``UsageError`` (or a subclass, such as ``coop_rl.demo.DemoError``) with a
message that names the bad input and what is expected; ``coop_rl.cli.main`` prints it as ``coop-rl: error: ...``
and returns 2, with no traceback. This module imports nothing, so any layer may raise it without pulling in the
ML stack or the command line (no import circle).
"""

from __future__ import annotations


class UsageError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


class CheckpointError(ValueError):
    """A checkpoint file that is not what coop-rl wrote (a user error: exit status 2)."""


__all__ = ["CheckpointError", "UsageError"]
