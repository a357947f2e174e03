"""Every recipe under recipes/ (accelerate configs aside) parses into AAConfig through the parser `coop-rl train`
uses (TrlParser over AAConfig, YAML via --config), with no model load: no recipe can carry a typo or a bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.relative_to(ROOT).parts)


def parse_recipe(path: Path, *overrides: str):
    from trl import TrlParser

    from coop_rl.aa_config import AAConfig

    # The same construction as coop_rl.cli.cmd_train.
    parser = TrlParser(AAConfig, prog="coop-rl train")
    (config,) = parser.parse_args_and_config(["--config", str(path), *overrides])
    return config


def _cpu_overrides(path: Path) -> list[str]:
    """GPU recipes (bf16) fail TrainingArguments' hardware check on a machine without a bf16 GPU; parsing them
    with use_cpu set still checks every key and value of the file."""
    import torch

    data = yaml.safe_load(path.read_text())
    if data.get("bf16") and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return ["--use_cpu", "true"]
    return []


def test_recipes_found():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    expected = {
        "ipd/aa_tiny.yaml",
        "ipd/naive_tiny.yaml",
        "ipd/aa_qwen2.5-7b.yaml",
        "ipd/aa_qwen2.5-0.5b.yaml",
        "tas/aa_tiny.yaml",
        "tas/naive_tiny.yaml",
        "tas/aa_qwen2.5-7b.yaml",
        "spgg/aa_tiny.yaml",
        "spgg/naive_tiny.yaml",
        "spgg/aa_classic_tiny.yaml",
        "spgg/naive_classic_tiny.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_parses_into_aaconfig(path, tmp_path):
    from dataclasses import fields

    from coop_rl.aa_config import AAConfig

    data = yaml.safe_load(path.read_text())
    known = {f.name for f in fields(AAConfig)}
    assert set(data) <= known, f"unknown keys: {sorted(set(data) - known)}"
    config = parse_recipe(path, "--output_dir", str(tmp_path / "out"), *_cpu_overrides(path))
    for key, value in data.items():
        if key in ("output_dir", "game_params", "report_to") or (key == "use_cpu" and _cpu_overrides(path)):
            continue
        got = getattr(config, key)
        assert got == value or str(got) == str(value) or getattr(got, "value", None) == value, (key, got, value)
    assert config.matches_per_iteration % config.group_size == 0
    model = data.get("model_name_or_path")
    assert isinstance(model, str) and model.strip(), "the recipe names no model (model_name_or_path)"
    assert config.model_name_or_path == model
    if config.game_params:
        assert isinstance(config.game_params, (dict, str))


@pytest.mark.parametrize(
    "name, beta, gamma, scale",
    [("ipd/aa_qwen2.5-7b.yaml", 0.5, 0.9, 5.0), ("tas/aa_qwen2.5-7b.yaml", 2.0, 0.96, 100.0)],
)
def test_paper_recipes_use_the_paper_settings(name, beta, gamma, scale, tmp_path):
    path = ROOT / "recipes" / name
    config = parse_recipe(path, "--output_dir", str(tmp_path / "out"), *_cpu_overrides(path))
    assert (config.beta, config.gamma, config.gamma_a, config.reward_scale) == (beta, gamma, gamma, scale)
    assert config.use_peft and (config.lora_r, config.lora_alpha) == (32, 64)
    assert config.lora_target_modules == "all-linear"
    assert config.rollout_backend == "vllm" and config.bf16


def test_tas_tiny_recipes_use_the_tas_credit_settings(tmp_path):
    aa = parse_recipe(ROOT / "recipes/tas/aa_tiny.yaml", "--output_dir", str(tmp_path / "a"))
    naive = parse_recipe(ROOT / "recipes/tas/naive_tiny.yaml", "--output_dir", str(tmp_path / "n"))
    assert (aa.beta, aa.gamma, aa.reward_scale, aa.credit) == (2.0, 0.96, 100.0, "aa")
    assert (naive.beta, naive.gamma, naive.reward_scale, naive.credit) == (0.0, 0.96, 100.0, "naive")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_usage_comment_names_the_recipe_itself(path):
    """The command in a recipe's header comment is what users copy: its --config must be this file."""
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    named = set(re.findall(r"--config (recipes/\S+\.yaml)", header))
    assert named <= {path.relative_to(ROOT).as_posix()}, named


def _readme_train_commands() -> list[list[str]]:
    """Every `accelerate launch ... -m coop_rl train ...` command line of README.md, as words."""
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if "accelerate launch" in line and "-m coop_rl train" in line:
            found.append(shlex.split(line, comments=True))
    return found


README_TRAIN_COMMANDS = _readme_train_commands()


def test_readme_has_accelerate_train_commands():
    assert any(w.endswith("/zero3.yaml") for words in README_TRAIN_COMMANDS for w in words)


@pytest.mark.parametrize("words", README_TRAIN_COMMANDS, ids=lambda w: " ".join(w[w.index("train") + 1 :])[:60])
def test_readme_accelerate_train_commands_parse(words, tmp_path):
    """The README's `accelerate launch` training lines need GPUs and the 7B weights; what can be checked without
    them is checked here: the settings after `train` parse into a valid AAConfig (no model load), the seed groups
    split over the launch's processes, and under ZeRO-3 the setting the trainer refuses there (the pool opponent
    copies the learner's weights: coop_rl/aa_trainer.py) is not asked for."""
    launcher = yaml.safe_load((ROOT / words[words.index("--config_file") + 1]).read_text())
    given = words[words.index("--num_processes") + 1] if "--num_processes" in words else None
    processes = int(given or launcher["num_processes"])
    settings = words[words.index("train") + 1 :]
    at = settings.index("--config")
    recipe = ROOT / settings[at + 1]
    del settings[at : at + 2]
    if "--output_dir" in settings:
        settings[settings.index("--output_dir") + 1] = str(tmp_path / "out")
    else:
        settings += ["--output_dir", str(tmp_path / "out")]
    config = parse_recipe(recipe, *settings, *_cpu_overrides(recipe))
    groups = config.matches_per_iteration // config.group_size
    assert groups % processes == 0, f"{groups} seed groups do not split over {processes} processes"
    if launcher.get("deepspeed_config", {}).get("zero_stage") == 3:
        assert config.opponent != "pool"


def test_a_typo_in_a_recipe_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes/ipd/aa_tiny.yaml").read_text() + "betta: 0.5\n")
    with pytest.raises((ValueError, SystemExit)):
        parse_recipe(bad, "--output_dir", str(tmp_path / "out"))


TINY_RECIPES = [p for p in RECIPES if p.name.endswith("_tiny.yaml")]


@pytest.mark.slow
@pytest.mark.parametrize("path", TINY_RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_tiny_recipe_trains_one_iteration(path, tmp_path, tiny_model_dir, capsys):
    """Each CPU recipe runs through `coop-rl train` (one iteration, one seed group, on the session's tiny model)."""
    from coop_rl.cli import main

    config = parse_recipe(path, "--output_dir", str(tmp_path / "parse"))
    out = tmp_path / "run"
    argv = ["train", "--config", str(path), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out)]
    argv += ["--max_steps", "1", "--save_steps", "1", "--logging_steps", "1"]
    argv += ["--matches_per_iteration", str(config.group_size)]
    assert main(argv) == 0
    assert (out / "coop_rl_policy.json").exists()
    assert "saved the trained policy" in capsys.readouterr().out
