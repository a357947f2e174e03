"""coop_rl.players.sampling: the tokens that end an answer."""

from types import SimpleNamespace

import pytest

from coop_rl.players.sampling import stop_token_ids


@pytest.mark.parametrize(
    ("named", "expected"),
    [
        (None, [2]),  # no generation config, or one that names no EOS: the tokenizer's
        (2, [2]),
        (7, [2, 7]),
        ([2, 7, 7], [2, 7]),  # Qwen2.5-Instruct's form: a list, the tokenizer's first
        ((7, None, True), [2, 7]),  # no placeholder or flag is a token id
    ],
)
def test_the_tokenizers_eos_first_then_the_model_folders(named, expected):
    tokenizer = SimpleNamespace(eos_token_id=2)
    config = None if named is None else SimpleNamespace(eos_token_id=named)
    assert stop_token_ids(tokenizer, config) == expected
