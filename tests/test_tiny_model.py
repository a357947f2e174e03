"""The tiny model's warm-start corpus (what it holds and its fingerprint) and the atomic save of a built model
(building the model itself is tested, slow, through the tiny_model_dir fixture)."""

from coop_rl.warm_start import POPULATIONS, collect_examples, corpus_fingerprint


def test_corpus_covers_every_game_and_its_fingerprint_tracks_the_text():
    examples = collect_examples(seed=0, scale=0.05)
    assert {e["game"] for e in examples} == set(POPULATIONS)
    assert corpus_fingerprint(examples) == corpus_fingerprint(collect_examples(seed=0, scale=0.05))
    # today's prompts hide the horizon: a corpus with "Round 1 of 10." is another corpus
    first = next(e for e in examples if e["game"] == "ipd")
    assert first["prompt"][-1]["content"].startswith("Round ") and " of " not in first["prompt"][-1]["content"]
    older = [dict(e) for e in examples]
    older[examples.index(first)] = {
        **first,
        "prompt": [*first["prompt"][:-1], {"role": "user", "content": "Round 1 of 10."}],
    }
    assert corpus_fingerprint(older) != corpus_fingerprint(examples)


def test_a_population_replaces_the_strategies_of_its_game_and_keeps_the_match_count():
    # scale 0.05: round(360 * 0.05 / 4) = 4 matches per ordered pair of (allc, alld), 10 rounds, 2 seats
    examples = collect_examples(0, 0.05, ("ipd",), populations={"ipd": ("allc", "alld")})
    answers = [e["completion"][0]["content"] for e in examples]
    # allc sits in 4 of the 8 seats of the 4 pairs: 4 seats x 4 matches x 10 rounds answer C, as many D
    assert len(examples) == 320 and answers.count("C") == 160 and answers.count("D") == 160
    # another game keeps its population, and the default corpus is another corpus
    assert corpus_fingerprint(collect_examples(0, 0.05, ("ipd",))) != corpus_fingerprint(examples)
    bos = collect_examples(0, 0.05, ("bos",), populations={"ipd": ("allc",)})
    assert corpus_fingerprint(bos) == corpus_fingerprint(collect_examples(0, 0.05, ("bos",)))


def _small_model_and_tokenizer():
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)  # fmt: skip
    words = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "C": 2, "D": 3}, unk_token="<pad>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>")
    return Qwen2ForCausalLM(config), tokenizer


def test_a_save_leaves_a_running_builds_partial_folder_and_removes_a_dead_ones(tmp_path):
    import os

    from coop_rl.warm_start import save_model_atomically

    model, tokenizer = _small_model_and_tokenizer()
    running = tmp_path / f".m.partial-{os.getppid()}"  # the parent of this process: alive
    dead = tmp_path / ".m.partial-999999999"  # above any pid this kernel hands out
    for folder in (running, dead):
        folder.mkdir()
    save_model_atomically(tmp_path / "m", model, tokenizer, {"built": True}, info_file="info.json")
    assert running.exists() and not dead.exists()
    assert {"config.json", "model.safetensors", "info.json"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_a_save_whose_weights_were_swept_away_is_refused_and_the_old_model_kept(tmp_path, monkeypatch):
    # another build's sweep removed this one's partial folder mid-save: the tokenizer's save recreated it empty
    import shutil

    import pytest

    from coop_rl.warm_start import save_model_atomically

    model, tokenizer = _small_model_and_tokenizer()
    out = tmp_path / "m"
    save_model_atomically(out, model, tokenizer, {"build": 1}, info_file="info.json")
    real_save = type(tokenizer).save_pretrained

    def swept_then_saved(self, folder, *args, **kwargs):
        shutil.rmtree(folder)
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "save_pretrained", swept_then_saved)
    with pytest.raises(OSError, match="lost its config or weights"):
        save_model_atomically(out, model, tokenizer, {"build": 2}, info_file="info.json")
    assert (out / "info.json").read_text() == '{\n  "build": 1\n}' and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
