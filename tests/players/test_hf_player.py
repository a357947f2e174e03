"""The transformers backend on the embedded tiny model: valid, history-aware play, exact logprobs, adapters."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from coop_rl.cli import main
from coop_rl.envs import make_game
from coop_rl.players import PlayerSpecError, SamplingConfig, make_player
from coop_rl.players.hf import HFPlayer, get_engine
from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.rollout import COLUMNS, collect_rollout

from helpers import copy_without_chat_template, run_play_json

# Tests on the tiny model are slow: it is built once per session (a few minutes on 2 cores).


@pytest.mark.slow
def test_model_plays_valid_and_undecided_against_tft(tiny_model_dir, capsys):
    code = main(["play", "--game", "ipd", "--players", f"hf:{tiny_model_dir},tft", "--matches", "64", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    model = summary["players"][0]
    assert model["invalid_rate"] <= 0.05
    assert 0.1 <= model["cooperation_rate"] <= 0.9


@pytest.mark.slow
def test_play_json_alone_on_stdout(tiny_model_dir):
    # in its own process: whatever transformers and torch print stays off stdout
    summary, _ = run_play_json("ipd", [f"hf:{tiny_model_dir}", "tft"], "--matches", "8", timeout=300)
    assert summary["matches"] == 8 and 0.0 <= summary["players"][0]["cooperation_rate"] <= 1.0


def _p_cooperate(engine, history):
    game = make_game("ipd")
    game.reset(0)
    for mine, theirs in history:
        game.step({0: mine, 1: theirs})
    encoded = engine.encode_prompts([game.pending_turns()[0].messages], max_new_tokens=8)
    with torch.no_grad():
        probs = engine.model(**encoded).logits[0, -1].softmax(-1)
    return probs[engine.tokenizer.convert_tokens_to_ids("C")].item()


@pytest.mark.slow
def test_model_reads_the_history(tiny_model_dir, own_hf_engines):
    engine = HFPlayer(f"hf:{tiny_model_dir}").engine
    after_cooperation = _p_cooperate(engine, [("C", "C")])
    after_defection = _p_cooperate(engine, [("D", "D")])
    # The warm start imitates a population in which cooperation follows cooperation far more often.
    assert after_cooperation - after_defection > 0.15


@pytest.mark.slow
def test_sampler_logprobs_match_a_forward_pass(tiny_model_dir, own_hf_engines):
    player = HFPlayer(f"hf:{tiny_model_dir}", sampling=SamplingConfig(temperature=1.0, max_new_tokens=16))
    rollout = collect_rollout("ipd", {"rounds": 2}, [player, ScriptedPlayer("tft", "ipd")], matches=8)
    model = player.engine.model
    for row in rollout.rows:
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = len(row["prompt_ids"])
        targets = ids[0, start:]
        forward = logprobs[start - 1 : -1].gather(-1, targets[:, None]).squeeze(-1)
        assert torch.allclose(forward, torch.tensor(row["sampler_logprobs"]), atol=1e-4)


def _ipd_prompts(histories):
    """The seat-0 prompt after each history of (mine, theirs) moves."""
    prompts = []
    for history in histories:
        game = make_game("ipd")
        game.reset(0)
        for mine, theirs in history:
            game.step({0: mine, 1: theirs})
        prompts.append(game.pending_turns()[0].messages)
    return prompts


@pytest.mark.slow
def test_frozen_weights_reuse_the_rules_cache_across_batches_and_answer_the_same(tiny_model_dir, own_hf_engines):
    engine = HFPlayer(f"hf:{tiny_model_dir}").engine
    batches = [  # two rounds, two histories each: every batch opens with the same rules
        _ipd_prompts([[("C", "C")], [("D", "C")]]),
        _ipd_prompts([[("C", "C"), ("C", "D")], [("C", "C"), ("D", "D")]]),
    ]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=4)
    lifelong = engine.prefix_memo
    assert lifelong is not None  # weights loaded from a folder never change: the engine keeps a memo
    engine.prefix_memo = None  # off: every batch runs its rules
    plain = [engine.generate(batch, None, sampling, seed=0) for batch in batches]
    with engine.frozen_weights() as memo:
        reused = [engine.generate(batch, None, sampling, seed=0) for batch in batches]
    assert engine.prefix_memo is None  # what was in place before comes back
    engine.prefix_memo = lifelong
    assert memo.reused_tokens > 0  # the second round's rules came from the first round's batch
    for expected, actions in zip(plain, reused, strict=True):
        assert [a.completion_ids for a in actions] == [a.completion_ids for a in expected]
        for a, b in zip(actions, expected, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.slow
def test_a_model_folders_generation_config_does_not_change_the_policy_sampled(tiny_model_dir, own_hf_engines):
    # transformers fills unset generation settings from the folder's generation_config.json (loaded into
    # model.generation_config): one that asks for a repetition penalty, a top-k, a banned token and a minimum
    # length must still leave the model's own distribution sampled, and its log-probabilities reported
    def player():  # the same spec and seed: the same random stream, and the same engine
        return HFPlayer(f"hf:{tiny_model_dir}", seed=3, sampling=SamplingConfig(temperature=1.0, max_new_tokens=16))

    def rows():
        rollout = collect_rollout("ipd", {"rounds": 3}, [player(), ScriptedPlayer("tft", "ipd")], matches=8)
        return [(row["completion_ids"], row["sampler_logprobs"]) for row in rollout.rows]

    plain = rows()
    player().engine.model.generation_config.update(
        repetition_penalty=1.5, top_k=2, no_repeat_ngram_size=1, min_new_tokens=3, suppress_tokens=[37]
    )
    assert rows() == plain


@pytest.mark.slow
def test_an_answer_stops_at_any_eos_the_model_folder_names_as_vllm_stops(tiny_model_dir, own_hf_engines):
    # Qwen2.5-Instruct's generation_config.json names <|endoftext|> besides the tokenizer's <|im_end|>: vLLM stops
    # at either, and so must the transformers engine, or one policy would answer differently on the two backends
    def rows():
        player = HFPlayer(f"hf:{tiny_model_dir}", seed=3, sampling=SamplingConfig(temperature=1.0, max_new_tokens=16))
        rollout = collect_rollout("ipd", {"rounds": 2}, [player, ScriptedPlayer("tft", "ipd")], matches=8)
        return player, [row["completion_ids"] for row in rollout.rows]

    player, plain = rows()
    eos = player.engine.tokenizer.eos_token_id
    assert all(ids[-1] == eos for ids in plain) and all(len(ids) > 1 for ids in plain)
    first = plain[0][0]  # a token every answer starting like the first one stops at now
    player.engine.model.generation_config.eos_token_id = [eos, first]
    _, stopped = rows()
    assert [ids for ids in stopped if ids[0] == first] == [[first]] * sum(ids[0] == first for ids in stopped) != []


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [
        ("cpu", "bfloat16", ("cpu", torch.bfloat16, True)),
        ("cuda:0", "bfloat16", ("cuda", torch.bfloat16, True)),  # the live model is float32 on a GPU as well
        ("cuda:1", "float16", ("cuda", torch.float16, True)),
        ("cpu", "float32", ("cpu", None, False)),
    ],
)
def test_generation_autocasts_to_the_trainers_precision_on_its_device(device, dtype, expected):
    from coop_rl.players.hf import HFEngine
    from coop_rl.precision import Precision

    engine = HFEngine.__new__(HFEngine)  # only the device and the precision decide the autocast
    engine.device, engine.precision = device, Precision(dtype, "test")
    context = engine._autocast()
    enabled = context._enabled or (device.startswith("cuda") and not torch.cuda.is_available())
    assert (context.device, context.fast_dtype if enabled else None, enabled) == expected


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_float32_live_model_samples_under_bf16_autocast_on_a_gpu(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from coop_rl.players.hf import HFEngine
    from coop_rl.precision import Precision

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to("cuda")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    engine = HFEngine.from_model(model, tokenizer, Precision("bfloat16", "test"))
    seen = []
    hook = model.model.layers[0].register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cuda")))
    try:
        engine.generate(_ipd_prompts([[("C", "C")]]), None, SamplingConfig(max_new_tokens=4), seed=0)
    finally:
        hook.remove()
    assert seen and all(seen)


@pytest.mark.slow
def test_rollout_dataset_rows(tiny_model_dir, tmp_path):
    from datasets import load_from_disk

    player = HFPlayer(f"hf:{tiny_model_dir}")
    rollout = collect_rollout("ipd", {"rounds": 3}, [player, player], matches=4, group_size=2)
    dataset = rollout.to_dataset()
    assert set(dataset.column_names) == set(COLUMNS)
    assert len(dataset) == 4 * 3 * 2  # matches x rounds x model seats
    assert sorted(set(dataset["seed_group"])) == [0, 1]
    for row in dataset:
        result = rollout.results[row["match_id"]]
        assert row["reward"] == result.rewards[row["seat"]][row["timestep"]]
        assert row["completion_ids"][-1] == player.engine.tokenizer.eos_token_id or len(row["completion_ids"]) == 128
    dataset.save_to_disk(str(tmp_path / "rollout"))
    assert load_from_disk(str(tmp_path / "rollout"))["completion_text"] == dataset["completion_text"]
    summary = rollout.summary()
    assert summary["rollout/matches"] == 4 and summary["rollout/tokens_per_s"] > 0


@pytest.mark.slow
def test_same_seed_same_answers(tiny_model_dir):
    def texts(seed):
        player = HFPlayer(f"hf:{tiny_model_dir}", seed=seed)
        rollout = collect_rollout("ipd", {"rounds": 3}, [player, ScriptedPlayer("tft", "ipd")], matches=8)
        return [row["completion_text"] for row in rollout.rows]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def _make_adapter(base_dir, out_dir, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter); make it change the outputs
            parameter.data.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.mark.slow
def test_adapters_share_one_engine_and_the_base_is_the_adapter_disabled(tiny_model_dir, tmp_path, own_hf_engines):
    adapter_a = _make_adapter(tiny_model_dir, tmp_path / "a", seed=1)
    adapter_b = _make_adapter(tiny_model_dir, tmp_path / "b", seed=2)
    base = make_player(f"hf:{tiny_model_dir}", "ipd")
    with_a = make_player(f"hf:{tiny_model_dir}@{adapter_a}", "ipd")
    with_b = make_player(f"hf:{adapter_b}", "ipd")  # an adapter directory alone names its base model
    assert base.engine is with_a.engine is with_b.engine is get_engine(tiny_model_dir.resolve())
    assert with_a.adapter != with_b.adapter

    game = make_game("ipd")
    game.reset(0)
    messages = [game.pending_turns()[0].messages]

    def answer_logprob(adapter):
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=4)
        return base.engine.generate(messages, adapter, sampling, seed=0)[0].logprobs[0]

    lp_base, lp_a, lp_b = answer_logprob(None), answer_logprob(with_a.adapter), answer_logprob(with_b.adapter)
    assert lp_a != pytest.approx(lp_base, abs=1e-4) and lp_b != pytest.approx(lp_a, abs=1e-4)
    # the base seat equals the model loaded without any adapter
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    encoded = base.engine.encode_prompts(messages, max_new_tokens=4)
    with torch.no_grad():
        reference = torch.log_softmax(fresh(**encoded).logits[0, -1], -1).max().item()
    assert lp_base == pytest.approx(reference, abs=1e-4)


@pytest.mark.slow
def test_a_corrupt_model_folder_is_a_user_error(tmp_path, tiny_model_dir):
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:4])
    with pytest.raises(PlayerSpecError, match="^cannot load model from .*truncated: Error while deserializing header"):
        make_player(f"hf:{truncated}", "ipd")
    no_template = copy_without_chat_template(tiny_model_dir, tmp_path / "no-template")
    with pytest.raises(PlayerSpecError, match="^cannot play .*no-template: its tokenizer has no chat template$"):
        make_player(f"hf:{no_template}", "ipd")
    # a template that refuses a system message (Gemma's does): one line when the model loads, not mid-match
    no_system = tmp_path / "no-system"
    shutil.copytree(no_template, no_system)
    (no_system / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    )
    with pytest.raises(PlayerSpecError, match=r"^cannot play .*no-system: its chat template refuses the games' "
                       r"system and user messages \(TemplateError: System role not supported\)$"):  # fmt: skip
        make_player(f"hf:{no_system}", "ipd")
    # a folder whose tokenizer files are gone (the chat template stays) loads a tokenizer with no vocabulary
    no_vocabulary = tmp_path / "no-vocabulary"
    shutil.copytree(tiny_model_dir, no_vocabulary)
    (no_vocabulary / "tokenizer.json").unlink()
    (no_vocabulary / "tokenizer_config.json").unlink()
    with pytest.raises(PlayerSpecError, match=r"^cannot play .*no-vocabulary: its tokenizer turns a prompt into no "
                       r"tokens \(no vocabulary\?\)$"):  # fmt: skip
        make_player(f"hf:{no_vocabulary}", "ipd")


@pytest.mark.slow
def test_an_adapter_of_another_base_model_is_a_user_error(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from coop_rl.tiny_model import TinyModelConfig, build_model

    narrower = build_model(AutoTokenizer.from_pretrained(tiny_model_dir), TinyModelConfig(hidden_size=64))
    get_peft_model(narrower, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(PlayerSpecError, match=r"^cannot load adapter .*adapter: it does not fit the model .*"
                       r"\(Error\(s\) in loading state_dict for PeftModel\w*\)$"):  # fmt: skip
        make_player(f"hf:{tiny_model_dir}@{tmp_path / 'adapter'}", "ipd")
    # the failed load injected LoRA layers into the shared engine's model: the next player gets a fresh engine
    from transformers import AutoModelForCausalLM

    assert not hasattr(get_engine(tiny_model_dir.resolve()).model, "peft_config")

    fitting = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(fitting, LoraConfig(r=8, target_modules=["q_proj"])).save_pretrained(tmp_path / "fitting")
    player = make_player(f"hf:{tiny_model_dir}@{tmp_path / 'fitting'}", "ipd")
    assert player.adapter == "adapter0"


def test_bad_model_specs_are_user_errors(tmp_path):
    with pytest.raises(PlayerSpecError, match="not found"):
        make_player(f"hf:{tmp_path / 'missing'}", "ipd")
    with pytest.raises(PlayerSpecError, match="neither a model"):
        make_player(f"hf:{tmp_path}", "ipd")
    proc = subprocess.run(
        [sys.executable, "-m", "coop_rl", "play", "--game", "ipd", "--players", f"hf:{tmp_path / 'nope'},tft"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
