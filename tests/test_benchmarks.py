"""The benchmark scripts run and write their keys (``--quick`` sizes). Nothing here is timed or compares numbers:
benchmarks are measured by ``make bench``, not by the test suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))


def run_all(argv: list[str]) -> int:
    import run_all as module

    return module.main(argv)


def test_run_all_fast_stages(tmp_path):
    assert run_all(["--quick", "--stages", "games,credit", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["env_steps_per_s"]) == {"ipd", "bos", "tas", "split", "spgg"}
    assert all(rate > 0 for rate in results["env_steps_per_s"].values())
    assert results["credit_ms_1024x10"] > 0
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert results["date"]
    assert results["stages"]["games"]["quick"] is True
    table = (tmp_path / "results.md").read_text()
    assert "| games |" in table and "credit" in table

    # A second run of another stage keeps the first run's keys.
    assert run_all(["--quick", "--stages", "credit", "--out", str(tmp_path)]) == 0
    assert "env_steps_per_s" in json.loads((tmp_path / "results.json").read_text())


def test_run_all_unknown_stage(tmp_path):
    with pytest.raises(SystemExit) as error:
        run_all(["--stages", "nope", "--out", str(tmp_path)])
    assert error.value.code == 2


def test_gpu_sh_arguments():
    help_text = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--help"], capture_output=True, text=True, check=True)
    assert "--dry-run" in help_text.stdout and "--cpu" in help_text.stdout
    bad = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.slow
def test_gpu_sh_dry_run(tmp_path):
    """Slow: the dry run imports torch, transformers, peft, accelerate, trl, vllm, ... in fresh interpreters."""
    dry = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "coop_rl.envs" in dry.stdout
    assert not (tmp_path / "gpu_results.json").exists()


@pytest.mark.slow
def test_run_all_model_stages(tmp_path, tiny_model_dir):
    stages = "rollout,training,memory,sample_efficiency"
    assert run_all(["--quick", "--stages", stages, "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rollout_batched_vs_sequential"] > 0
    assert results["aa_iteration_vs_trl_grpo_step"] > 0
    split = results["aa_iteration_split_s"]
    assert set(split) == {"rollout", "credit", "update"} and 0 < split["rollout"] < results["aa_iteration_s"]
    assert results["peak_rss_mb"] > 0
    assert set(results["iterations_to_coop_0_9"]["per_seed"]) == {"0"}
    assert 0 <= results["naive_at_same_iterations"]["mutual_cooperation_rate_median"] <= 1
    assert "errors" not in results


def test_a_benchmark_removes_only_run_folders_it_made(tmp_path):
    from bench_common import BENCHMARK_RUN_FILE, fresh_run_dir

    run = fresh_run_dir(tmp_path / "aa-s0", "learning_seeds.py")
    assert [p.name for p in run.iterdir()] == [BENCHMARK_RUN_FILE]
    (run / "checkpoint-1").mkdir()  # its training
    assert [p.name for p in fresh_run_dir(run, "learning_seeds.py").iterdir()] == [BENCHMARK_RUN_FILE]
    (run / "checkpoint-1").mkdir()
    with pytest.raises(SystemExit, match=f"^gpu_demo_llm.py: {run} holds files this script did not make"):
        fresh_run_dir(run, "gpu_demo_llm.py")  # another script's run
    users = tmp_path / "demo-smollm2"
    (users / "aa").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds files this script did not make; choose another folder"):
        fresh_run_dir(users, "gpu_demo_llm.py")  # a mistyped --runs: the user's own runs
    assert (run / "checkpoint-1").is_dir() and (users / "aa").is_dir()


def test_machine_names_the_precision_the_stages_ran_in():
    from bench_common import machine

    from coop_rl.precision import choose_precision, precision_record

    assert machine()["auto_precision"] == precision_record(choose_precision("cpu", "auto"))


def learning_seeds():
    import learning_seeds as module

    return module


def test_learning_seeds_bar():
    bar = learning_seeds().meets_bar
    reciprocal = {"self_play": 0.8, "vs_tft": 0.8, "vs_alld": 0.2}
    assert bar("aa", reciprocal) is True
    assert bar("aa", {**reciprocal, "vs_alld": 0.25}) is False
    assert bar("aa", {**reciprocal, "vs_tft": 0.75}) is False
    assert bar("naive", {**reciprocal, "self_play": 0.3}) is True
    assert bar("naive", {**reciprocal, "self_play": 0.9}) is False
    assert bar("sum", reciprocal) is None
    assert (
        learning_seeds().describe_bar()
        == "aa: self_play >= 0.8, vs_tft >= 0.8, vs_alld <= 0.2; naive: self_play <= 0.3"
    )


def test_learning_seeds_early_curve_counts_c_per_iteration(tmp_path):
    folder = tmp_path / "trajectories"
    folder.mkdir()
    for iteration, texts in ((1, "CCCD"), (2, "CD"), (4, "D")):  # iteration 3 missing: the curve stops at 2
        lines = [json.dumps({"iteration": iteration, "text": f" {t}\n"}) for t in texts]
        (folder / f"iteration-{iteration:06d}.jsonl").write_text("\n".join(lines) + "\n")
    assert learning_seeds().early_curve(tmp_path) == [[1, 0.75], [2, 0.5]]
    assert learning_seeds().early_curve(tmp_path, iterations=1) == [[1, 0.75]]
    assert learning_seeds().early_curve(tmp_path / "nothing") == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,x"], "comma-separated integers"),
        (["--set", "beta"], "FIELD=VALUE"),
        (["--recipes", "recipes/ipd/nope.yaml"], "no recipe"),
    ],
)
def test_learning_seeds_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        learning_seeds().parse_args(argv)
    assert error.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_learning_seeds_trains_and_evaluates(tmp_path, tiny_model_dir):
    out = tmp_path / "seeds.json"
    argv = ["--recipes", "recipes/ipd/naive_tiny.yaml", "--seeds", "3", "--matches", "2", "--work", str(tmp_path)]
    argv += ["--out", str(out), "--set", f"model_name_or_path={tiny_model_dir}", "--set", "max_steps=2"]
    argv += ["--set", "matches_per_iteration=16", "--set", "save_steps=2", "--set", "logging_steps=1"]
    assert learning_seeds().main(argv) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert (run["recipe"], run["credit"], run["seed"]) == ("recipes/ipd/naive_tiny.yaml", "naive", 3)
    assert [step for step, _ in run["curve"]] == [1, 2]
    assert [step for step, _ in run["early_curve"]] == [1, 2] and all(0 <= rate <= 1 for _, rate in run["early_curve"])
    assert run["meets_bar"] is (run["self_play"] <= 0.3)
    assert report["summary"]["recipes/ipd/naive_tiny.yaml"].startswith(f"{int(run['meets_bar'])}/1 meet the bar")
    assert report["machine"]["cpu"] and report["overrides"]["max_steps"] == "2"


HIDE_PACKAGES = """
import sys

HIDDEN = ("trl", "datasets", "vllm")


class _Hide:  # every finder sees the hidden packages as absent, as importlib.util.find_spec does
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if name.split(".")[0] in HIDDEN else self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""


@pytest.mark.slow
def test_gpu_sh_cpu_smoke(tmp_path):
    """The GPU machine has torch, transformers, peft and accelerate only: trl, datasets and vllm are hidden."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PACKAGES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hide)}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--cpu", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert results["errors"] == {}
    assert all(results["env"]["packages"][name].startswith("unavailable") for name in ("trl", "datasets", "vllm"))
    assert results["build"]["random-tiny"]["parameters"] > 0
    assert results["rollout_hf"]["random-tiny"]["batched_tokens_per_s"] > 0
    iteration = results["aa_iteration"]
    assert set(iteration["split_s"]) == {"rollout", "credit", "update"}
    assert 0 < iteration["split_s"]["rollout"] < iteration["iteration_s"]
    assert results["aa_iteration_lora"]["iteration_s"] > 0
    assert "skipped" in results["vllm"]


def test_readme_performance_commands():
    """The Performance section (kept out of tests/test_readme.py) names scripts that exist and stages that run_all
    knows."""
    import re

    import run_all as module

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Performance", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"benchmarks/[\w./]+\.(?:py|sh)", section))
    assert paths, "the Performance section names no benchmark script"
    for path in paths:
        assert (ROOT / path).exists(), path
    stage_lists = re.findall(r"--stages ([a-z_,]+)", section)
    assert stage_lists, "the Performance section names no --stages"
    for stages in stage_lists:
        assert set(stages.split(",")) <= set(module.STAGES), stages
    assert "make bench" in section


@pytest.mark.slow
def test_init_model_random(tmp_path, capsys):
    """``coop-rl init-model random-tiny`` (gpu.sh builds random-0.5b the same way): tokenizer and random weights."""
    from coop_rl.cli import main
    from coop_rl.tiny_model import RANDOM_MODEL_SIZES

    out = tmp_path / "model"
    assert main(["init-model", "random-tiny", "--out", str(out)]) == 0
    info = json.loads((out / "coop_rl_tiny.json").read_text())
    assert info["kind"] == "coop-rl random-tiny" and info["parameters"] > 0
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert RANDOM_MODEL_SIZES["random-0.5b"]["hidden_size"] == 896
    assert RANDOM_MODEL_SIZES["random-0.5b"]["num_hidden_layers"] == 24
    capsys.readouterr()
    assert main(["init-model", "random-7b", "--out", str(tmp_path / "x")]) == 2
    assert "random-0.5b" in capsys.readouterr().err


def test_exploit_search_writes_both_modes(tmp_path, capsys):
    # A scripted policy: the two modes must find the same best exploiter and gain, number for number.
    import exploit_search

    from coop_rl.eval.exploit import CANDIDATES_PER_RUN

    out = tmp_path / "exploit_search.json"
    exploit_search.main(["--policy", "tft", "--matches", "2", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["candidates_per_run"] == {"one_at_a_time": 1, "together": CANDIDATES_PER_RUN}
    runs = result["runs"]
    assert len(runs["one_at_a_time"]) == len(runs["together"]) == 1
    assert runs["one_at_a_time"][0]["best"] == runs["together"][0]["best"] == "m1:CCCCC+endD"
    assert runs["one_at_a_time"][0]["gain"] == runs["together"][0]["gain"] == 2.0
    assert set(result["seconds_median"]) == {"one_at_a_time", "together"} and result["speedup"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["speedup"] == result["speedup"]


def test_exploit_search_names_a_missing_policy_folder(tmp_path):
    import exploit_search

    with pytest.raises(SystemExit, match="no policy folder /no/such/dir"):
        exploit_search.main(["--policy", "hf:/no/such/dir", "--out", str(tmp_path / "x.json")])


@pytest.mark.slow
def test_smollm2_iteration_modes_write_their_split(tmp_path, tiny_model_dir, capsys):
    # the tiny model stands in for SmolLM2: the script only needs a model folder
    import smollm2

    out = tmp_path / "smollm2.json"
    argv = ["--model", str(tiny_model_dir), "--modes", "after,reuse", "--iterations", "1", "--matches", "8"]
    assert smollm2.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["modes"] == ["after", "reuse"] and set(result["iteration_s"]) == {"after", "reuse"}
    assert all(split["rollout_s"] > 0 and split["update_s"] > 0 for split in result["iteration_s"].values())
    assert result["speedup"] > 0 and result["precision"]["dtype"] in ("float32", "bfloat16")


def test_smollm2_refuses_unknown_modes(capsys):
    import smollm2

    assert smollm2.main(["--modes", "after,fast", "--model", "/no/such/dir"]) == 2
    assert "--modes takes distinct names from before, after, reuse" in capsys.readouterr().err


@pytest.mark.slow
def test_prefix_memo_plays_the_same_matches_both_ways(tmp_path, tiny_model_dir, capsys):
    import prefix_memo

    out = tmp_path / "prefix_memo.json"
    argv = ["--policy", f"hf:{tiny_model_dir}", "--matches", "8", "--repeats", "1", "--out", str(out)]
    assert prefix_memo.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["seconds_median"]) == {"recompute", "memo"} and result["speedup"] > 0
    rates = result["cooperation_rate"]
    assert rates["recompute"] == rates["memo"]  # the same seeds, the same answers


def test_prefix_memo_needs_an_hf_policy(capsys):
    import prefix_memo

    assert prefix_memo.main(["--policy", "tft"]) == 2
    assert "--policy must be an hf: policy" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_sh_demo_llm_trains_and_evaluates_both_methods(tmp_path, tiny_model_dir):
    """gpu.sh --demo-llm's stages as the GPU machine runs them (the tiny model stands in for SmolLM2, one step each):
    coop-rl through gpu.sh's shim, from the repository root."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--runs", str(runs), "--model", str(tiny_model_dir), "--max-steps", "1", "--matches", "2"]
    done = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--demo-llm", "--out", str(out), "--", *argv],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_demo_llm.json").read_text())
    assert list(results["stages"]) == ["train aa", "eval aa", "train naive", "eval naive"]
    assert all(stage["returncode"] == 0 for stage in results["stages"].values())
    for method in ("aa", "naive"):
        row, log = results["methods"][method]["row"], results["methods"][method]["log"]
        assert row["metric"] == "cooperation rate" and 0 <= row["vs_tft"] <= 1 and 0 <= row["vs_alld"] <= 1
        assert log[0]["step"] == 1 and log[0]["time/iteration_s"] > 0


def test_gpu_demo_llm_serves_a_gguf_file_as_the_wheel(tmp_path, monkeypatch, capsys):
    import gpu_demo_llm

    from coop_rl.pretrained import locate_gguf

    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(gpu_demo_llm.gguf_package(gguf, tmp_path / "site"))
    assert locate_gguf().resolve() == gguf.resolve()
    assert gpu_demo_llm.main(["--out", str(tmp_path / "out"), "--gguf", str(tmp_path / "missing.gguf")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_learning_builds_counts_the_bar_over_build_and_seed_pairs():
    import learning_builds

    runs = [
        {"build": 0, "seed": 0, "credit": "aa", "meets_bar": True},
        {"build": 1, "seed": 0, "credit": "aa", "meets_bar": False},
        {"build": 0, "seed": 0, "credit": "naive", "meets_bar": True},
        {"build": 1, "seed": 0, "credit": "naive", "meets_bar": None},  # no bar counts as not met
    ]
    assert learning_builds.counts(runs) == {"aa": "1/2", "naive": "1/2"}
    assert learning_builds.counts([]) == {}


@pytest.mark.parametrize("argv", [["--builds", "0,x"], ["--seeds", "1;2"]])
def test_learning_builds_bad_arguments(argv, capsys):
    import learning_builds

    with pytest.raises(SystemExit) as error:
        learning_builds.parse_args(argv)
    assert error.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
