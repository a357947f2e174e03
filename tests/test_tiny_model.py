"""The tiny model's warm-start corpus: what it holds and its fingerprint (building the model is tested, slow,
through the tiny_model_dir fixture)."""

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
