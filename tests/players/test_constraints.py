"""Constrained answers: the choice trie, and sampler logprobs renormalised over the allowed tokens."""

import pytest
import torch

from coop_rl.players.constraints import ChoiceConstraint


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


@pytest.mark.slow
def test_constrained_play_is_valid_and_logprobs_are_renormalised(tiny_model_dir, own_hf_engines):
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


def _walk(logits_by_depth, constraints, temperature=1.0, top_p=1.0, max_tokens=8, seed=0):
    """sample_choices over fixed logits: depth d's logits are logits_by_depth[d]; records every model call."""
    from coop_rl.players.constraints import sample_choices

    calls = []

    def next_logits(columns):
        calls.append(columns.tolist())
        return logits_by_depth[sum(len(c[0]) for c in calls)]

    generator = torch.Generator().manual_seed(seed)
    answers = sample_choices(constraints, logits_by_depth[0], next_logits, temperature, top_p, generator, max_tokens)
    return answers, calls


def test_trie_sampler_logprobs_are_renormalised_and_forced_tokens_cost_no_forward_pass():
    constraint = ChoiceConstraint(_Tokenizer(), ["C", "D"])
    logits = torch.full((2, 8), -5.0)
    logits[:, 5], logits[:, 6] = 1.0, 1.0 + torch.log(torch.tensor(3.0))  # P(D) = 3/4 over {C, D}
    answers, calls = _walk([logits, None], [constraint, constraint], temperature=0.0)
    # greedy: D, then the end-of-text forced (logprob 0) without running the model again
    assert [ids for ids, _, _ in answers] == [[6, 0], [6, 0]]
    assert answers[0][1] == pytest.approx([torch.log(torch.tensor(0.75)).item(), 0.0], abs=1e-6)
    assert answers[0][2] == [[5, 6], [0]]
    assert calls == []


def test_trie_sampler_feeds_every_token_chosen_since_the_last_forward_pass():
    # "CD" and "DC": after the first label the second is forced, then end-of-text or... both two labels long
    class Tokenizer(_Tokenizer):
        def encode(self, text, add_special_tokens=False):
            return {"CDC": [5, 6, 5], "CDD": [5, 6, 6]}[text]

    constraint = ChoiceConstraint(Tokenizer(), ["CDC", "CDD"])
    first = torch.zeros(1, 8)
    third = torch.full((1, 8), -9.0)
    third[0, 6] = 0.0  # after C, D the model prefers D by far
    answers, calls = _walk([first, None, third], [constraint], temperature=0.0)
    assert answers[0][0] == [5, 6, 6, 0]
    assert answers[0][1][:2] == [0.0, 0.0]  # forced tokens: probability 1 under the constraint
    assert calls == [[[5, 6]]]  # one forward pass, fed both forced tokens at once


def test_trie_sampler_samples_the_renormalised_distribution_and_respects_max_tokens():
    constraint = ChoiceConstraint(_Tokenizer(), ["C", "D"])
    logits = torch.zeros(4000, 8)
    logits[:, 6] = torch.log(torch.tensor(3.0))  # P(D | {C, D}) = 3/4
    answers, _ = _walk([logits, None], [constraint] * 4000, seed=1)
    share_d = sum(ids[0] == 6 for ids, _, _ in answers) / 4000
    assert abs(share_d - 0.75) < 0.03  # 4000 draws: standard error 0.007
    cut, _ = _walk([logits[:2], None], [constraint] * 2, max_tokens=1)
    assert [len(ids) for ids, _, _ in cut] == [1, 1]  # the end-of-text cut off, as max_new_tokens would


@pytest.mark.slow
def test_trie_sampler_matches_generate_with_the_logits_processor(tiny_model_dir, own_hf_engines):
    """Greedy answers and their logprobs agree between the two constrained paths on the tiny model."""
    from coop_rl.players import SamplingConfig
    from coop_rl.players.hf import HFPlayer
    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import run_matches

    player = HFPlayer(f"hf:{tiny_model_dir}", sampling=SamplingConfig(temperature=0.0), constrain=True)
    by_path = {}
    for trie in (True, False):
        player.engine.choice_sampler = trie
        turns = []
        run_matches("ipd", {}, [player, ScriptedPlayer("random", "ipd")], matches=8, on_turns=turns.extend)
        by_path[trie] = [t.action for t in turns if t.seat == 0]
    assert len(by_path[True]) == len(by_path[False]) == 80
    for fast, reference in zip(by_path[True], by_path[False], strict=True):
        assert fast.completion_ids == reference.completion_ids
        assert fast.allowed == reference.allowed
        assert fast.logprobs == pytest.approx(reference.logprobs, abs=1e-4)


def test_a_constrained_batch_has_room_for_its_longest_choice():
    from coop_rl.players.constraints import room_for_choices

    assert ChoiceConstraint(_Tokenizer(), ["C", "D", "CD"]).longest == 3  # C, D, then end-of-text
    assert room_for_choices(4, 27) == 27 and room_for_choices(128, 3) == 128


@pytest.mark.slow
@pytest.mark.parametrize("trie", [True, False], ids=["trie", "generate"])
def test_a_constrained_answer_longer_than_max_new_tokens_comes_out_whole(tiny_model_dir, own_hf_engines, trie):
    # a social-CoT answer is ~26 tokens and the IPD recipes answer in 4: a cut one was invalid, every turn
    from coop_rl.players import SamplingConfig
    from coop_rl.players.hf import HFPlayer
    from coop_rl.runner import run_matches

    player = HFPlayer(f"hf:{tiny_model_dir}", sampling=SamplingConfig(max_new_tokens=4), constrain=True)
    player.engine.choice_sampler = trie
    results = run_matches("ipd", {"social_cot": True, "rounds": 3}, [player, player], matches=4, keep_transcripts=True)
    answers = [event for result in results for event in result.transcript if event.get("phase") == "action"]
    assert len(answers) == 4 * 3 * 2 and all(event["valid"] for event in answers)
    choices = {f"<prediction>{a}</prediction> <action>{b}</action>" for a in "CD" for b in "CD"}
    assert {event["text"] for event in answers} <= choices
