"""The players a learner meets (coop_rl/opponents.py): group assignment, and the pool of past learners, which under
LoRA is adapters on the one live model (no copy of it) and without LoRA full copies. A small random Qwen2 built
from its config serves as the model (no tiny-model build: these tests are fast)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from coop_rl.opponents import (
    AdapterPlayer,
    LivePolicyPlayer,
    Opponents,
    active_adapter,
    adapters_off,
    add_lora,
    load_pool_file,
)
from coop_rl.players import Player, SamplingConfig

from helpers import small_qwen2


def _config(tmp_path, **overrides):
    from coop_rl.aa_config import AAConfig

    settings = dict(output_dir=str(tmp_path / "run"), max_steps=1, report_to="none", use_cpu=True, seed=3)
    return AAConfig(**{**settings, **overrides})


def _model():
    return small_qwen2().eval()


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "C": 2, "D": 3}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>")


def _opponents(args, model):
    return Opponents(args, 2, lambda: model, _tokenizer(), SamplingConfig(), lambda salt: salt)


def _nudge(model):
    """Move every trainable weight (LoRA's B starts at zero: an untouched adapter is the identity)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.2)


IDS = torch.tensor([[5, 9, 11, 2, 7, 3]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_groups_alternate_the_learner_seat_and_draw_co_players_from_the_rng(tmp_path):
    self_play = _opponents(_config(tmp_path), None)
    assert self_play.assign_groups(3) == [((0, 1), "live")] * 3
    frozen = _opponents(_config(tmp_path, opponent="frozen", opponents="tft, alld"), None)
    rng = random.Random(3)
    expected = [((g % 2,), f"frozen:{['tft', 'alld'][rng.randrange(2)]}") for g in range(4)]
    assert frozen.assign_groups(4) == expected
    pool = _opponents(_config(tmp_path, opponent="pool", pool_prob=0.5), None)
    assert pool.assign_groups(4) == [((0,), "live"), ((1,), "live"), ((0,), "live"), ((1,), "live")]  # empty pool
    pool.pool = [{}, {}, {}]
    rng, expected = random.Random(3), []
    for group in range(6):
        key = f"pool:{rng.randrange(3)}" if rng.random() < 0.5 else "live"
        expected.append(((group % 2,), key))
    assert pool.assign_groups(6) == expected
    # One group per rollout (or an odd number): the seat alternates across rollouts.
    assert [frozen.assign_groups(1, rollout)[0][0] for rollout in range(4)] == [(0,), (1,), (0,), (1,)]
    assert [frozen.assign_groups(3, rollout)[2][0] for rollout in range(2)] == [(0,), (1,)]
    # learner_seat fixes the seat; the co-players are drawn as before
    fixed = _opponents(_config(tmp_path, opponent="frozen", opponents="tft, alld", learner_seat=1), None)
    rng = random.Random(3)
    assert fixed.assign_groups(4) == [((1,), f"frozen:{['tft', 'alld'][rng.randrange(2)]}") for _ in range(4)]
    assert [fixed.assign_groups(1, rollout)[0][0] for rollout in range(3)] == [(1,), (1,), (1,)]


def test_pool_entries_under_lora_are_adapters_on_the_live_model(tmp_path):
    args = _config(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, opponent="pool", pool_every=1, pool_size=2)
    model = add_lora(_model(), args, 2)
    opponents = _opponents(args, model)
    base = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    _nudge(model)
    opponents.grow(model, 0)
    (entry,) = opponents.pool
    assert set(entry) == trainable and all(t.device.type == "cpu" for t in entry.values())
    past = copy.deepcopy(model)  # the learner as it was when it joined the pool
    _nudge(model)
    live_logits = _logits(model)

    player = opponents.seat_players(((0,), "pool:0"), live=None)[1]
    assert isinstance(player, AdapterPlayer) and (player.adapter, player.spec) == ("pool0", "pool[0]")
    assert player.live.engine.model is model  # the live engine, no copy of the model
    assert list(model.peft_config) == ["default", "pool0"]
    now = dict(model.named_parameters())
    assert all(now[n] is p for n, p in base.items())  # the base weights are the same tensors
    added = {n: p for n, p in now.items() if ".pool0." in n}
    assert sum(p.numel() for p in added.values()) == sum(t.numel() for t in entry.values())  # LoRA weights only
    assert {n for n, p in now.items() if p.requires_grad} == trainable  # pool adapters frozen, the live ones not
    with active_adapter(model, "pool0"):
        assert torch.allclose(_logits(model), _logits(past), atol=1e-6, rtol=0)
    assert torch.equal(_logits(model), live_logits)  # the live adapter still serves the learner

    _nudge(model)
    opponents.grow(model, 1)
    opponents.grow(model, 2)  # pool_size 2: the first entry is dropped
    assert len(opponents.pool) == 2 and opponents.pool[0] is not entry
    assert opponents.pool_player(1).adapter == "pool1" and opponents.pool_player(0).adapter == "pool0"
    weights = dict(model.named_parameters())  # each adapter holds its entry's weights (the entries moved)
    for index, slot in ((0, ".pool0."), (1, ".pool1.")):
        assert all(torch.equal(weights[n.replace(".default.", slot)], t) for n, t in opponents.pool[index].items())

    live_logits = _logits(model)
    opponents.release_adapters(model)  # before a save: peft would write every adapter into the policy folder
    assert list(model.peft_config) == ["default"]
    assert {n for n, _ in model.named_parameters()} == set(now) - set(added)
    assert torch.equal(_logits(model), live_logits)
    model.save_pretrained(tmp_path / "saved")
    assert [p.name for p in (tmp_path / "saved").iterdir() if p.is_dir()] == []


def test_pool_entries_without_lora_are_frozen_copies(tmp_path):
    args = _config(tmp_path, opponent="pool", pool_every=1, precision="bfloat16")
    model = _model()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    opponents = _opponents(args, model)
    opponents.grow(model, 0)
    past = copy.deepcopy(model)
    _nudge(model)
    player = opponents.pool_player(0)
    assert isinstance(player, LivePolicyPlayer) and player.spec == "pool[0]"
    assert player.engine.model is not model and not any(p.requires_grad for p in player.engine.model.parameters())
    assert torch.equal(_logits(player.engine.model), _logits(past))
    # a past copy samples in the learner's precision, not the machine's automatic choice
    assert player.engine.precision == opponents.engine().precision and player.engine.precision.dtype == "bfloat16"


def test_seat_adapters_play_each_seat_under_its_adapter(tmp_path):
    args = _config(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, seat_adapters=True)
    model = add_lora(_model(), args, 2)
    assert list(model.peft_config) == ["default", "seat1"]
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # both adapters train
    opponents = _opponents(args, model)
    live = opponents.live_player(0)
    seats = opponents.seat_players(((0, 1), "live"), live)
    assert [(p.adapter, p.spec) for p in seats] == [("default", "learner[default]"), ("seat1", "learner[seat1]")]
    assert [opponents.adapter_of(seat) for seat in (0, 1)] == ["default", "seat1"]


def test_adapters_off_runs_the_base_model_and_leaves_every_seat_adapter_trainable(tmp_path):
    args = _config(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, seat_adapters=True)
    model = add_lora(_model(), args, 2)
    _nudge(model)  # LoRA B starts at 0: make the adapters change the logits
    base = _logits(_model())  # the same seed: the weights the adapters were added to
    with adapters_off(model):
        assert torch.equal(_logits(model), base)
    assert not torch.equal(_logits(model), base)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    with model.disable_adapter():  # peft's own: on leaving, only the active adapter ('default') trains again
        pass
    assert not any(p.requires_grad for n, p in model.named_parameters() if "seat1" in n)


def test_pool_and_rng_come_back_from_a_checkpoint(tmp_path):
    args = _config(tmp_path, opponent="pool", pool_every=1)
    first = _opponents(args, None)
    first.pool = [{"w": torch.arange(3.0)}, {"w": torch.ones(2)}]
    first.rng.random()
    torch.save(first.state(), tmp_path / "coop_rl_pool.pt")
    second = _opponents(args, None)
    second.load(tmp_path / "coop_rl_pool.pt")
    assert [e["w"].tolist() for e in second.pool] == [[0.0, 1.0, 2.0], [1.0, 1.0]]
    assert second.rng.random() == first.rng.random()
    pool, rng = load_pool_file(tmp_path / "coop_rl_pool.pt")
    assert len(pool) == 2 and isinstance(rng, tuple)


@pytest.mark.parametrize("step,grows", [(0, True), (1, False), (2, True), (3, False), (4, True)])
def test_the_pool_grows_every_pool_every_rollouts(tmp_path, step, grows):
    # num_iterations 2: a rollout every 2 steps; pool_every 1: every rollout joins
    opponents = _opponents(_config(tmp_path, opponent="pool", pool_every=1, num_iterations=2), None)
    model = torch.nn.Linear(2, 1)
    opponents.grow(model, step)
    assert len(opponents.pool) == int(grows)


class _SeedRecorder(Player):
    """Stands in for a model player kept across rollouts (the vLLM seat: an engine start costs a minute here); it
    records what the trainer tells it, which is all that is tested."""

    def __init__(self, spec: str) -> None:
        self.spec, self.seeds, self.synced = spec, [], []

    def act(self, requests):
        raise AssertionError("not played here")

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)

    def sync_adapter(self, path) -> None:
        self.synced.append(path)


def test_every_player_kept_across_rollouts_restarts_from_the_rollouts_seed(tmp_path):
    # the learner's vLLM seat too: else a resumed run replays the first rollouts' request seeds, and an evaluation
    # between rollouts shifts the next rollout's samples
    args = _config(tmp_path, rollout_backend="vllm", use_peft=True, lora_r=4, lora_alpha=8, constrain_answers=False)
    model = add_lora(_model(), args, 2)
    opponents = _opponents(args, model)
    learner, frozen = _SeedRecorder("learner"), _SeedRecorder("frozen")
    opponents._vllm_player, opponents._frozen_players = learner, {"frozen": frozen}
    for step in (0, 2, 2):
        assert opponents.live_player(step) is learner
    expected = [opponents.seed_of(step) for step in (0, 2, 2)]
    assert learner.seeds == frozen.seeds == expected
    assert len(learner.synced) == 3 and (learner.synced[0] / "adapter_config.json").exists()


def test_an_evaluation_opponent_restarts_its_sampling_at_every_evaluation(tmp_path):
    # its random state carried over from one evaluation to the next, and started afresh after a resume: a resumed
    # run's eval/ metrics differed from the unbroken run's
    args = _config(tmp_path, play_eval_every=1, play_eval_opponents="model")
    opponents = _opponents(args, _model())
    judge = _SeedRecorder("model")
    opponents._eval_players = {"model": judge}
    for step in (0, 1, 2):
        opponents.live_player(step)
        assert opponents.frozen_player("model", for_eval=True) is judge
    assert judge.seeds == [opponents.seed_of(0)] * 3


@pytest.mark.slow
def test_a_trained_policy_as_opponent_answers_at_its_own_length(tmp_path, tiny_model_dir):
    # it was cut to the learner's max_new_tokens (an exploiter's 4 against a policy trained to answer in 400)
    import shutil

    from coop_rl.policy_folder import write_policy_settings

    policy = shutil.copytree(tiny_model_dir, tmp_path / "policy")
    write_policy_settings(policy, {"constrain_answers": False, "game": "ipd", "max_new_tokens": 9})
    args = _config(tmp_path, opponent="frozen", opponents=f"hf:{policy},hf:{tiny_model_dir}", max_new_tokens=4)
    opponents = Opponents(args, 2, lambda: _model(), _tokenizer(), SamplingConfig(max_new_tokens=4), lambda s: s)
    assert opponents.frozen_player(f"hf:{policy}").sampling.max_new_tokens == 9
    assert opponents.frozen_player(f"hf:{tiny_model_dir}").sampling.max_new_tokens == 4  # none recorded: the learner's
    assert opponents.frozen_player(f"hf:{policy}", for_eval=True).sampling.max_new_tokens == 9
