"""coop_rl/policy_folder.py: what a policy folder holds and how a spec names it, shared by the hf and vllm players.

Folders here are stand-ins that pass the checks (a config.json, an adapter_config.json): no model is loaded.
"""

import json
import re
from pathlib import Path

import pytest

from coop_rl.players import PlayerSpecError, make_player
from coop_rl.policy_folder import (
    POLICY_SETTINGS_FILE,
    PolicyFolder,
    parse_policy_spec,
    read_policy_settings,
    resolve_model_dir,
    write_policy_settings,
)


@pytest.fixture
def base(tmp_path) -> Path:
    directory = tmp_path / "base"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").touch()
    return directory


def make_adapter(directory: Path, base_dir: Path | str) -> Path:
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base_dir), "r": 8}))
    return directory


def test_resolve_a_model_folder_and_an_adapter_folder(tmp_path, base):
    assert resolve_model_dir(str(base)) == (base.resolve(), None)
    adapter = make_adapter(tmp_path / "adapter", base)
    assert resolve_model_dir(str(adapter)) == (base.resolve(), adapter.resolve())


def test_resolve_errors_are_one_line_spec_errors(tmp_path):
    cases = [
        (tmp_path / "missing", "model directory not found: "),
        (tmp_path, "holds neither a model (config.json) nor a peft adapter (adapter_config.json)"),
    ]
    config_only = tmp_path / "config-only"  # train and exploit --learn failed at from_pretrained with a traceback
    config_only.mkdir()
    (config_only / "config.json").write_text("{}")
    cases.append((config_only, "holds a model config but no weights (*.safetensors, *.bin, *.pt)"))
    no_base = tmp_path / "no-base"
    no_base.mkdir()
    (no_base / "adapter_config.json").write_text("{}")
    cases.append((no_base, "names no base model (base_model_name_or_path)"))
    for name, text in (
        ("a-list", "[1, 2]"),
        ("a-number", '{"base_model_name_or_path": 5}'),
        ("empty", '{"base_model_name_or_path": ""}'),
    ):
        odd = tmp_path / name
        odd.mkdir()
        (odd / "adapter_config.json").write_text(text)
        cases.append((odd, "names no base model (base_model_name_or_path)"))
    for name, text, message in (
        ("config-a-list", "[1, 2]", "config.json holds a list, not an object"),
        ("config-not-json", "{not json", "Expecting property name"),
    ):
        odd = tmp_path / name
        odd.mkdir()
        (odd / "config.json").write_text(text)
        cases.append((odd, f"cannot read the model config in {odd}: {message}"))
    remote = make_adapter(tmp_path / "remote", "some-org/some-model")
    cases.append((remote, "needs base model some-org/some-model, which is not a local model directory"))
    for path, message in cases:
        with pytest.raises(PlayerSpecError, match=re.escape(message)) as error:
            resolve_model_dir(str(path))
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_parse_policy_spec(tmp_path, base, backend):
    adapter = make_adapter(tmp_path / "adapter", base)
    assert parse_policy_spec(f"{backend}:{base}", backend) == PolicyFolder(base.resolve(), None)
    assert parse_policy_spec(f" {backend}:{base} ", backend) == (base.resolve(), None)
    assert parse_policy_spec(str(base), backend) == (base.resolve(), None)  # the prefix is optional
    assert parse_policy_spec(f"{backend}:{adapter}", backend) == (base.resolve(), adapter.resolve())
    assert parse_policy_spec(f"{backend}:{base}@{adapter}", backend) == (base.resolve(), adapter.resolve())
    with pytest.raises(PlayerSpecError, match=rf"malformed spec '{backend}:': expected {backend}:<model_dir>"):
        parse_policy_spec(f"{backend}:", backend)
    with pytest.raises(PlayerSpecError, match=rf"malformed spec '{backend}:.*@ ': expected"):  # '@' and no adapter
        parse_policy_spec(f"{backend}:{base}@ ", backend)
    with pytest.raises(PlayerSpecError, match=rf"is itself an adapter; give {backend}:<base>@<adapter>"):
        parse_policy_spec(f"{backend}:{adapter}@{adapter}", backend)
    with pytest.raises(PlayerSpecError, match="adapter directory not found or not a peft adapter"):
        parse_policy_spec(f"{backend}:{base}@{tmp_path / 'nothing'}", backend)


def test_the_settings_file_belongs_to_the_policy_folder(tmp_path, base):
    adapter = make_adapter(tmp_path / "adapter", base)
    folder = parse_policy_spec(f"hf:{adapter}", "hf")
    assert folder.path == adapter.resolve()
    assert PolicyFolder(base, None).path == base
    assert folder.settings() == {} and folder.constrain_answers is False  # no settings file: the defaults
    written = write_policy_settings(adapter, {"constrain_answers": True, "game": "ipd"})
    assert written == adapter / POLICY_SETTINGS_FILE == adapter / "coop_rl_policy.json"
    assert written.read_text() == '{\n  "constrain_answers": true,\n  "game": "ipd"\n}\n'
    assert read_policy_settings(adapter) == {"constrain_answers": True, "game": "ipd"}
    assert folder.constrain_answers is True
    assert parse_policy_spec(f"hf:{base}", "hf").constrain_answers is False  # the base model's folder has none
    written.write_text("{not json")
    with pytest.raises(PlayerSpecError, match="unreadable .*coop_rl_policy.json"):
        folder.settings()
    written.write_text("[true]")  # JSON, but not the object of settings
    with pytest.raises(PlayerSpecError, match="unreadable .*coop_rl_policy.json: not a JSON object"):
        folder.settings()


def test_every_backend_reads_specs_through_the_policy_folder(tmp_path):
    """hf and vllm give the same one-line errors for the same folders (vllm fails before importing vllm)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for backend in ("hf", "vllm"):
        with pytest.raises(PlayerSpecError, match="model directory not found"):
            make_player(f"{backend}:{tmp_path / 'missing'}", "ipd")
        with pytest.raises(PlayerSpecError, match="neither a model"):
            make_player(f"{backend}:{empty}", "ipd")
        with pytest.raises(PlayerSpecError, match=f"expected {backend}:<model_dir>"):
            make_player(f"{backend}:@x", "ipd")


def test_a_policy_is_played_at_its_training_answer_length_unless_told(tmp_path):
    from coop_rl.players import SamplingConfig, _with_answer_length
    from coop_rl.policy_folder import write_policy_settings

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").touch()
    unset = SamplingConfig(temperature=0.5, max_new_tokens=None)  # the command line without --max-new-tokens
    assert _with_answer_length(f"hf:{policy}", unset, "tas") == SamplingConfig(0.5, 1.0, 128)  # none recorded
    write_policy_settings(policy, {"constrain_answers": False, "game": "tas", "max_new_tokens": 400})
    assert _with_answer_length(f"vllm:{policy}", unset, "tas").max_new_tokens == 400  # as it was trained
    assert _with_answer_length(f"hf:{policy}", unset, "ipd").max_new_tokens == 128  # another game's length
    assert _with_answer_length("openai:m@http://127.0.0.1:1/v1", unset, "tas").max_new_tokens == 128


def test_an_adapter_of_another_base_model_is_told_from_the_file_headers(tmp_path):
    # vLLM pads a smaller adapter with zeros and serves it without a word: the shapes are checked first
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from coop_rl.policy_folder import adapter_misfit

    def model(hidden: int):
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
        return Qwen2ForCausalLM(config)

    model(32).save_pretrained(tmp_path / "base")
    for name, hidden in (("fits", 32), ("narrower", 16)):
        get_peft_model(model(hidden), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / name)
    assert adapter_misfit(tmp_path / "fits", tmp_path / "base") is None
    assert adapter_misfit(tmp_path / "narrower", tmp_path / "base") == (
        "model.layers.0.self_attn.q_proj: lora_A [4, 16] against [32, 32]"
    )
    assert adapter_misfit(tmp_path / "no-adapter", tmp_path / "base") is None  # the loader says what is missing


@pytest.mark.parametrize(
    "content",
    [
        b"\x01\x02",
        (2**40).to_bytes(8, "little") + b"{}",
        (4).to_bytes(8, "little") + b"[1]x",
        (9).to_bytes(8, "little") + b'{"a": 1}x',
    ],
    ids=["cut-short", "header-past-the-end", "not-a-mapping", "no-shapes"],
)
def test_a_corrupt_adapter_file_is_one_line(tmp_path, content):
    from coop_rl.policy_folder import adapter_misfit

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(PlayerSpecError, match=r"adapter_model\.safetensors is not a readable safetensors file$"):
        adapter_misfit(adapter, tmp_path)
