"""Tag extraction shared by every game's parser (linear time on any text, never raises), and answer regexes."""

from __future__ import annotations

import bisect
import functools
import re


@functools.lru_cache(maxsize=64)
def _tag_patterns(tag: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    name = re.escape(tag)
    return (
        re.compile(rf"<\s*{name}\s*>", re.IGNORECASE),
        re.compile(rf"<\s*/\s*{name}\s*>", re.IGNORECASE),
    )


def last_tag_content(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` in ``text``, or None when there is none.

    "Last complete" = the last opening tag that has a closing tag after it, paired with the first closing tag
    after it, so nested tags resolve to the innermost one (``<propose><propose>3</propose></propose>`` -> "3").
    Tags are case-insensitive and may have spaces inside the brackets. Opening and closing tags are located with
    two linear scans and paired with a binary search, instead of a lazy ``<tag>(.*?)</tag>`` regex whose cost is
    quadratic on texts with many unclosed opening tags.
    """
    opener, closer = _tag_patterns(tag)
    closes = [m.start() for m in closer.finditer(text)]
    if not closes:
        return None
    open_end = None
    for match in opener.finditer(text):
        if match.end() > closes[-1]:
            break
        open_end = match.end()
    if open_end is None:
        return None
    return text[open_end : closes[bisect.bisect_left(closes, open_end)]]


def strip_tag(text: str, tag: str) -> str:
    """``text`` without any complete ``<tag>...</tag>`` span (linear: non-nested pairing, left to right)."""
    opener, closer = _tag_patterns(tag)
    pieces, position = [], 0
    while True:
        start = opener.search(text, position)
        if start is None:
            break
        end = closer.search(text, start.end())
        if end is None:
            break
        pieces.append(text[position : start.start()])
        position = end.end()
    pieces.append(text[position:])
    return " ".join(pieces)


def integer_pattern(high: int) -> str:
    """A regex group matching the integers 0..``high`` written plainly (``(10|[0-9])`` for 10).

    Above 100 the group matches any plain integer of at most as many digits as ``high`` (it may exceed ``high``:
    the game then counts the answer invalid), which keeps the grammar small."""
    if high <= 9:
        return f"([0-{high}])"
    if high <= 100:
        return "(" + "|".join(str(n) for n in range(high, 9, -1)) + "|[0-9])"
    return f"(0|[1-9][0-9]{{0,{len(str(high)) - 1}}})"
