"""Named opponent suites for ``coop-rl eval --opponents``.

``--opponents`` takes a comma-separated list that mixes suite names and player specs, for instance
``ipd-classic,axelrod:FirstByGrofman,hf:runs/old``. Suite names expand in place to their members; duplicates are
dropped (the first occurrence keeps its place).

Suites (each usable only with the games it lists):

* ``ipd-classic`` (ipd, bos): allc, alld, tft, tf2t, grim, wsls, stft, alternator, random
* ``tas-classic`` (tas): greedy, honest, fair
* ``split-classic`` (split): greedy, fair
* ``spgg-classic`` (spgg): free_rider, full, conditional

Whether a plain player spec names a real player (a known strategy, an existing checkpoint) is checked when the
player is built (:func:`coop_rl.players.make_player`), before any match is played.
"""

from __future__ import annotations

from collections.abc import Sequence

from coop_rl.errors import UsageError


class SuiteError(UsageError, ValueError):
    """An opponent list that cannot be used: empty, malformed, or a suite for another game (a user error: one line,
    exit status 2; still a ValueError for callers that catch that)."""


#: suite name -> (games it applies to, member specs)
SUITES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ipd-classic": (
        ("ipd", "bos"),
        ("allc", "alld", "tft", "tf2t", "grim", "wsls", "stft", "alternator", "random"),
    ),
    "tas-classic": (("tas",), ("greedy", "honest", "fair")),
    "split-classic": (("split",), ("greedy", "fair")),
    "spgg-classic": (("spgg",), ("free_rider", "full", "conditional")),
}


def suite_names(game: str | None = None) -> list[str]:
    """The suites usable with ``game`` (all suites when ``game`` is None)."""
    return [name for name, (games, _) in SUITES.items() if game is None or game in games]


def suite_members(name: str, game: str) -> list[str]:
    """The member specs of suite ``name`` for ``game``; a suite of another game raises :class:`SuiteError`."""
    if name not in SUITES:
        raise SuiteError(f"unknown opponent suite {name!r}; known: {', '.join(SUITES)}")
    games, members = SUITES[name]
    if game not in games:
        usable = ", ".join(suite_names(game)) or "none"
        raise SuiteError(f"suite {name!r} is for {', '.join(games)}, not {game!r}; suites for {game}: {usable}")
    return list(members)


def resolve_opponents(opponents: str | Sequence[str], game: str) -> list[str]:
    """Expand a comma-separated string (or a list) of suite names and player specs into player specs.

    An empty list, an empty item (``"tft,,alld"``) or a suite that does not apply to ``game`` raises
    :class:`SuiteError`. A name that ends in ``-classic`` but is no known suite raises too (a likely typo).
    """
    if isinstance(opponents, str):
        items = [item.strip() for item in opponents.split(",")]
        if not opponents.strip() or all(not item for item in items):
            raise SuiteError("empty opponent list: give suite names and/or player specs, e.g. --opponents ipd-classic")
        if any(not item for item in items):
            raise SuiteError(f"malformed --opponents {opponents!r}: an empty item in the comma-separated list")
    else:
        items = [str(item).strip() for item in opponents]
        if not items:
            raise SuiteError("empty opponent list: give suite names and/or player specs, e.g. --opponents ipd-classic")
        if any(not item for item in items):
            raise SuiteError("empty opponent spec in the opponent list")
    specs: list[str] = []
    for item in items:
        expanded = suite_members(item, game) if item in SUITES or item.endswith("-classic") else [item]
        for spec in expanded:
            if spec not in specs:
                specs.append(spec)
    return specs


__all__ = ["SUITES", "SuiteError", "resolve_opponents", "suite_members", "suite_names"]
