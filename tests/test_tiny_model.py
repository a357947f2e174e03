"""The tiny model's warm-start corpus: what it holds and its fingerprint (building the model is tested, slow,
through the tiny_model_dir fixture)."""

from coop_rl.tiny_model import POPULATIONS, collect_examples, corpus_fingerprint


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
