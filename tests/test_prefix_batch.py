"""A batch laid out around its rows' common opening (coop_rl/prefix_batch.py): exact rows, masks and prefix length."""

from __future__ import annotations

from coop_rl.prefix_batch import shared_prefix_batch

PAD = 0
OPENING = list(range(1, 11))  # ten shared tokens


def test_rows_are_prefix_then_padding_then_their_own_suffix():
    batch = shared_prefix_batch([OPENING + [21, 22, 23], OPENING + [31]], PAD)
    assert batch["prefix_length"] == 10
    assert batch["input_ids"].tolist() == [OPENING + [21, 22, 23], OPENING + [PAD, PAD, 31]]
    assert batch["attention_mask"].tolist() == [[1] * 13, [1] * 10 + [0, 0, 1]]


def test_every_row_keeps_one_token_of_its_own():
    batch = shared_prefix_batch([OPENING, OPENING + [11]], PAD)
    assert batch["prefix_length"] == 9  # the shorter row keeps its last token after the prefix
    assert batch["input_ids"].tolist() == [OPENING[:9] + [PAD, 10], OPENING + [11]]


def test_a_short_opening_or_a_single_row_is_plain_left_padding():
    short = shared_prefix_batch([[1, 2, 3, 4], [1, 2, 5]], PAD)  # 2 shared tokens < min_prefix 8
    assert short["prefix_length"] == 0
    assert short["input_ids"].tolist() == [[1, 2, 3, 4], [PAD, 1, 2, 5]]
    assert short["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert shared_prefix_batch([OPENING + [11]], PAD)["prefix_length"] == 0


def test_max_prefix_caps_the_shared_part():
    batch = shared_prefix_batch([OPENING + [21], OPENING + [31, 32]], PAD, max_prefix=8)
    assert batch["prefix_length"] == 8
    assert batch["input_ids"].tolist() == [OPENING[:8] + [PAD, 9, 10, 21], OPENING[:8] + [9, 10, 31, 32]]
