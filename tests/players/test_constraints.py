"""Constrained answers: the choice trie, and sampler logprobs renormalised over the allowed tokens."""

import pytest
import torch

from coop_rl.envs import make_game
from coop_rl.players.constraints import ChoiceConstraint, answer_choices


class _Tokenizer:
    """A stand-in with fixed ids, to check the trie arithmetic exactly (the real tokenizer is tested below)."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return {"C": [5], "D": [6], "CD": [5, 6]}[text]


def test_choice_trie():
    constraint = ChoiceConstraint(_Tokenizer(), ["C", "D", "CD"])
    assert constraint.allowed([]) == [5, 6]
    assert constraint.allowed([5]) == [0, 6]
    assert constraint.allowed([5, 6]) == [0]
    assert constraint.allowed([6, 0]) == []
    assert constraint.allowed_per_position([5, 0]) == [[5, 6], [0, 6]]


def test_answer_choices_by_game_and_phase():
    ipd = make_game("ipd")
    ipd.reset(0)
    assert answer_choices(ipd, ipd.pending_turns()[0]) == ["C", "D"]
    akata = make_game("ipd", payoffs="akata")
    akata.reset(0)
    assert answer_choices(akata, akata.pending_turns()[0]) == ["J", "F"]
    tas = make_game("tas")
    tas.reset(0)
    assert answer_choices(tas, tas.pending_turns()[0]) is None


@pytest.mark.slow
def test_constrained_play_is_valid_and_logprobs_are_renormalised(tiny_model_dir):
    from coop_rl.players import SamplingConfig
    from coop_rl.players.hf import HFPlayer
    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import run_matches

    player = HFPlayer(f"hf:{tiny_model_dir}", sampling=SamplingConfig(temperature=1.5), constrain=True)
    turns = []
    run_matches("ipd", {}, [player, ScriptedPlayer("alld", "ipd")], matches=16, on_turns=turns.extend)
    model_turns = [t for t in turns if t.seat == 0]
    assert model_turns and all(t.valid and t.action.text in ("C", "D") for t in model_turns)
    model = player.engine.model
    for turn in model_turns[:20]:
        action = turn.action
        ids = torch.tensor([action.prompt_ids + action.completion_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        start = len(action.prompt_ids)
        for k, (token, options) in enumerate(zip(action.completion_ids, action.allowed, strict=True)):
            row = logits[start - 1 + k]
            expected = (row[token] - torch.logsumexp(row[options], -1)).item()
            assert action.logprobs[k] == pytest.approx(expected, abs=1e-4)
        assert action.logprobs[-1] == 0.0  # the end-of-text after a complete label is forced
