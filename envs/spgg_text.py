"""MAC-SPGG as text: the answer parsers and formats, and the synthetic arithmetic task family of task mode.

The answer formats are documented in :mod:`coop_rl.envs.spgg` (the game states them in its prompts).
"""

from __future__ import annotations

import ast
import math
import random
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from coop_rl.envs.base import clean_text
from coop_rl.envs.parsing import last_tag_content, strip_tag

MAX_MESSAGE_CHARS = 300
# Numbers longer than this are not answers a player means; rejecting them before conversion keeps parsing
# cheap (no million-digit Fractions) and avoids int()'s 4300-digit limit on Python >= 3.11.
_MAX_NUMBER_CHARS = 64
_MAX_ANSWER_CHARS = 50

# ----- parsing -----------------------------------------------------------------------------------------------
# ASCII only ([0-9], not \d): unicode digits are not accepted. Exponents are short: 1e999 is still read (and is
# out of range), 1e99999 is unparseable.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_INTEGER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.0*)?")


def _decimal(text: str) -> Fraction | None:
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        # Through Decimal: exact, and (text at most 64 characters, exponent at most 3 digits) cheap.
        return Fraction(Decimal(text))
    except (InvalidOperation, ValueError):
        return None


def parse_fraction_of_endowment(text: str) -> Fraction | None:
    """The number written in ``text`` ("0.7", "70%", "7/10"), exactly, or None when it is not one such number.
    The result may lie outside [0, 1]; range checks are the caller's."""
    text = text.strip()
    if not text or len(text) > _MAX_NUMBER_CHARS:
        return None
    if text.endswith("%"):
        value = _decimal(text[:-1].rstrip())
        return None if value is None else value / 100
    if "/" in text:
        numerator, _, denominator = text.partition("/")
        top, bottom = _decimal(numerator.strip()), _decimal(denominator.strip())
        if top is None or not bottom:  # None or zero
            return None
        return top / bottom
    return _decimal(text)


def snap(value: Fraction, levels: int) -> Fraction:
    """The level k/K nearest to ``value`` in [0, 1] (a value half-way between two levels goes up)."""
    return Fraction(math.floor(value * levels + Fraction(1, 2)), levels)


def parse_contribution(text: Any, levels: int = 10) -> Fraction | None:
    """The contribution level (k/K, exact) declared in ``text``, or None when the answer is invalid. Text inside
    the answer's ``<message>`` is the message's, never the declaration (a message that quotes a tag to the next
    player does not change the sender's own)."""
    text = strip_tag(clean_text(text), "message")
    content = last_tag_content(text, "contribute")
    value = parse_fraction_of_endowment(content if content is not None else text)
    if value is None or not 0 <= value <= 1:
        return None
    return snap(value, levels)


def parse_answer(text: Any) -> int | None:
    """The integer answer in ``text`` (``<answer>N</answer>`` or a bare integer), or None when invalid; as for
    :func:`parse_contribution`, the ``<message>`` is not read."""
    text = strip_tag(clean_text(text), "message")
    content = last_tag_content(text, "answer")
    candidate = (content if content is not None else text).strip()
    if len(candidate) > _MAX_ANSWER_CHARS or not _INTEGER.fullmatch(candidate):
        return None
    return int(candidate.split(".")[0].replace(",", ""))


def parse_message(text: Any) -> str:
    """The optional message in ``text`` on one line (line breaks and runs of whitespace as single spaces: it is
    quoted into later players' prompts, where a line of its own could read as the game's), truncated; "" when
    there is none."""
    content = last_tag_content(clean_text(text), "message")
    return "" if content is None else " ".join(content.split())[:MAX_MESSAGE_CHARS]


def format_contribution(q: Fraction | float) -> str:
    """The answer text declaring ``q`` (what the scripted strategies send)."""
    return f"<contribute>{float(q):.6g}</contribute>"


def format_answer(answer: int | None) -> str:
    return f"<answer>{0 if answer is None else answer}</answer>"


# ----- the synthetic task family -----------------------------------------------------------------------------
# Every template is positive for positive operands, so 0 is never a correct answer (the free rider's answer).
_TEMPLATES = (
    ("{a} + {b} * {c}", lambda a, b, c: a + b * c),
    ("{a} * {c} + {b}", lambda a, b, c: a * c + b),
    ("({a} + {b}) * {c}", lambda a, b, c: (a + b) * c),
    ("({a} + {b}) * {c} - {b}", lambda a, b, c: (a + b) * c - b),
)


def make_task(rng: random.Random, digits: int = 2) -> tuple[str, int]:
    """An arithmetic expression with two ``digits``-digit operands and a one-digit factor, and its value."""
    low, high = 10 ** (digits - 1), 10**digits - 1
    a, b, c = rng.randint(low, high), rng.randint(low, high), rng.randint(2, 9)
    text, value = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
    return text.format(a=a, b=b, c=c), value(a, b, c)


_OPS = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y, ast.Mult: lambda x, y: x * y}


def evaluate_expression(expression: str) -> int | None:
    """Value of an integer expression with + - * and parentheses (the task family), or None if it is not one.
    Walks the syntax tree itself: no eval()."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError("not an arithmetic task")

    try:
        return walk(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
