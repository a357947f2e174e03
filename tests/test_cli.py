"""The command-line contract of architecture.md, run as a user runs it."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from coop_rl.cli import main

from helpers import run_play_json


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def play_json(capsys, *argv):
    code, out, err = run_cli(capsys, "play", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_play_tft_vs_alld(capsys):
    summary = play_json(capsys, "--game", "ipd", "--players", "tft,alld", "--rounds", "10")
    assert [p["mean_return"] for p in summary["players"]] == [9.0, 14.0]
    assert [p["cooperation_rate"] for p in summary["players"]] == [0.1, 0.0]
    assert [p["invalid_rate"] for p in summary["players"]] == [0.0, 0.0]
    assert summary["game"] == "ipd" and summary["matches"] == 10 and summary["welfare"] == 23.0


def test_play_tas_welfare(capsys):
    greedy = play_json(capsys, "--game", "tas", "--players", "greedy,greedy", "--matches", "50")
    honest = play_json(capsys, "--game", "tas", "--players", "honest,honest", "--matches", "50")
    assert greedy["welfare"] == 550.0
    assert honest["welfare"] == 1000.0


def test_solve_spgg(capsys):
    code, out, _ = run_cli(capsys, "solve", "--game", "spgg", "--set", "reward=classic", "--json")
    assert code == 0
    assert json.loads(out)["spne"] == [0, 0, 0] and json.loads(out)["unique"] is True
    code, out, _ = run_cli(capsys, "solve", "--game", "spgg", "--set", "reward=redesigned", "--json")
    assert json.loads(out)["spne"] == [0.6, 1, 1] and json.loads(out)["unique"] is True
    # the penalty matters under the defaults (first_mover_mean = 0): without it the followers stop at 0.9
    code, out, _ = run_cli(capsys, "solve", "--game", "spgg", "--set", "penalty=0", "--json")
    assert code == 0 and json.loads(out)["spne"] == [0.6, 0.9, 0.9] and json.loads(out)["unique"] is True
    # every game parameter reaches the solver: a first mover whose bonus counts a mean of 1 contributes fully
    code, out, _ = run_cli(capsys, "solve", "--game", "spgg", "--set", "first_mover_mean=1", "--json")
    assert code == 0 and json.loads(out)["spne"] == [1, 1, 1]


def test_play_spgg_three_players(capsys):
    summary = play_json(capsys, "--game", "spgg", "--players", "full,full,full", "--set", "reward=classic")
    assert [p["mean_return"] for p in summary["players"]] == [18.0, 18.0, 18.0]


def test_table_output(capsys):
    code, out, _ = run_cli(capsys, "play", "--game", "ipd", "--players", "tft,alld")
    assert code == 0
    assert "mean_return" in out and "tft" in out and "welfare 23.00" in out


def test_tournament_table(capsys):
    code, out, _ = run_cli(capsys, "tournament", "--game", "ipd", "--players", "tft,alld,allc", "--json")
    result = json.loads(out)
    assert result["mean_return"] == [[30.0, 9.0, 30.0], [14.0, 10.0, 50.0], [30.0, 0.0, 30.0]]


def test_same_seed_same_transcripts(capsys, tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        argv = ["play", "--game", "tas", "--players", "honest,greedy", "--seed", "5", "--transcripts", str(path)]
        run_cli(capsys, *argv)
        paths.append(path)
    assert paths[0].read_text() == paths[1].read_text() and paths[0].read_text().count("\n") == 10


@pytest.mark.parametrize("extra,horizon", [([], ""), (["--set", "show_horizon=true"], " of 10")])
def test_transcripts_hold_the_prompt_each_answer_answered(capsys, tmp_path, extra, horizon):
    path = tmp_path / "t.jsonl"
    run_cli(
        capsys, "play", "--game", "ipd", "--players", "tft,alld", "--matches", "1", "--transcripts", str(path), *extra
    )
    events = json.loads(path.read_text())["events"]
    assert [(e["timestep"], e["seat"], e["text"]) for e in events[:3]] == [(0, 0, "C"), (0, 1, "D"), (1, 0, "D")]
    # by default the prompts name the round but not how many there are (docs/games.md, "The horizon is hidden")
    assert events[2]["prompt"] == f"Round 2{horizon}.\nLast round you played C and the other played D.\nAnswer C or D."
    assert events[-1]["prompt"].startswith(f"Round 10{horizon}.\n")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["play", "--game", "chess", "--players", "tft,alld"], "unknown game 'chess'"),
        (["play", "--game", "ipd", "--players", "tft,nobody"], "unknown strategy 'nobody'"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--set", "rounds"], "malformed --set"),
        (
            ["play", "--game", "ipd", "--players", "tft,alld", "--set", "noise=0.1", "--set", "noise=0.9"],
            "--set noise given twice ('0.1' and '0.9')",
        ),
        (["play", "--game", "ipd", "--players", "tft,alld", "--set", "rounds=ten"], "rounds='ten'"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--set", "colour=red"], "unknown parameter 'colour'"),
        (["play", "--game", "ipd", "--players", "tft,,alld"], "malformed --players"),
        (["play", "--game", "ipd", "--players", "tft,alld,allc"], "takes 2 players"),
        (["play", "--game", "ipd", "--players", "axelrod:NoSuchThing,tft"], "NoSuchThing"),
        (["play", "--game", "ipd"], "required"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--mat", "2"], "unrecognized arguments: --mat 2"),
        (["solve", "--game", "ipd"], "spgg only"),
        (["games", ""], "unknown game ''; known: ipd, bos, tas, split, spgg"),
        (["tournament", "--game", "spgg", "--players", "full,free_rider"], "round robins of two-player games"),
        (["solve", "--game", "spgg", "--set", "reward=nice"], "reward='nice'"),
        (["play", "--game", "ipd", "--players", "vllm:/no/such/model,tft"], "model directory not found"),  # no more
        (["play", "--game", "ipd", "--players", "tft,alld", "--group-size", "0"], "--group-size must be >= 1"),
        (["exploit", "--policy", "tft", "--game", "ipd", "--candidates-per-run", "0"], "--candidates-per-run must be"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--matches", "99999999999"], "--matches must be between"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--transcripts", "."], "it is a directory"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--transcripts", "README.md/t.jsonl"], "not an existing"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--temperature", "nan"], "--temperature must be"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--top-p", "5"], "--top-p must be in (0, 1]"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--max-new-tokens", "0"], "--max-new-tokens must be"),
        (["play", "--game", "ipd", "--players", "tft,alld", "--set", "rounds=5", "--rounds", "6"], "give one"),
        (["play", "--game", "tas", "--players", "fair,greedy", "--set", "upper_value=1e308"], "between 0 and 1,000"),
        (["solve", "--game", "spgg", "--set", "rho=inf"], "rho='inf': must be between 0 and 1,000,000"),
        (
            ["play", "--game", "ipd", "--players", "tft,alld", "--set", "noise=inf"],
            "noise='inf': must be between 0 and 1",
        ),
        (["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--out", ""], "--out needs a folder"),
        (["demo", "--out", "README.md"], "is not a directory"),
        (["demo", "--out", "unused", "--tiny", "README.md"], "--tiny 'README.md' is not a model directory"),
        (["init-model", "tiny", "--out", "unused", "--data-scale", "inf"], "--data-scale must be in (0, 100]"),
        (["init-model", "tiny", "--out", "unused", "--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),
        (["init-model", "random-tiny", "--out", "unused", "--seed", str(2**64)], "--seed must be in [0, 2147483647]"),
        (["init-model", "tiny", "--out", ""], "--out needs a folder path"),
        (["init-model", "tiny", "--out", "unused", "--games", "ipd,"], "--games takes comma-separated game names"),
        (["init-model", "tiny", "--out", "unused", "--population", "tas=greedy"], "--population names tas, which"),
        (["init-model", "random-tiny", "--out", "unused", "--warm-start"], "--warm-start applies to smollm2;"),
        (["train", "--config=recipes"], "is a directory, not a recipe file"),
        (["init-model", "tiny", "--out", "unused", "--population", "ipd"], "GAME=STRATEGY"),
        (["init-model", "tiny", "--out", "unused", "--population", "ipd=allc,nope"], "unknown strategy 'nope'"),
        (["init-model", "tiny", "--out", "unused", "--population", "chess=allc"], "no warm-start population"),
        (["init-model", "smollm2", "--out", "unused", "--population", "ipd=allc"], "init-model tiny only"),
        # init-model options the kind would ignore (refused before anything is built; a default value given counts)
        (["init-model", "tiny", "--out", "unused", "--unconstrained"], "--unconstrained applies to smollm2; init"),
        (["init-model", "tiny", "--out", "unused", "--warm-start"], "tiny would ignore it (it is always warm-started)"),
        (["init-model", "random-tiny", "--out", "unused", "--games", "ipd"], "random-tiny would ignore it"),
        (["init-model", "random-tiny", "--out", "unused", "--data-scale", "0.5"], "--data-scale applies to tiny and"),
        (["init-model", "random-0.5b", "--out", "unused", "--precision", "auto"], "--precision applies to tiny and"),
        (["init-model", "random-tiny", "--out", "unused", "--unconstrained"], "--unconstrained applies to smollm2;"),
        (["init-model", "smollm2", "--out", "unused", "--games", "ipd"], "smollm2 without --warm-start would ignore"),
        (["init-model", "smollm2", "--out", "unused", "--data-scale", "1"], "smollm2 without --warm-start would"),
        (["init-model", "smollm2", "--out", "unused", "--seed", "0"], "--seed applies to tiny, random-* and smollm2"),
        (["init-model", "random-7b", "--out", "unused", "--games", "ipd"], "unknown model kind 'random-7b'; known:"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "coop_rl", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_exploiter_folder_with_unreadable_results_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{not json")
    code, out, err = run_cli(capsys, "exploit", "--policy", "tft", "--game", "ipd", "--learn", "--out", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == f"coop-rl: error: {tmp_path / 'results.json'} is not readable JSON; choose another --out\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing trained or written


@pytest.mark.parametrize(
    "argv",
    [
        "tiny --seed 1 --data-scale 0.5 --games ipd --population ipd=allc --precision bfloat16",
        "smollm2 --precision float32 --unconstrained",
        "smollm2 --warm-start --seed 1 --data-scale 0.5 --games ipd --precision auto",
        "random-tiny --seed 1",
        "random-0.5b",
    ],
)
def test_init_model_accepts_every_option_its_kind_reads(argv, tmp_path):
    """The other side of the refusals above: what a kind reads passes the check (nothing is built here)."""
    from coop_rl.cli import build_parser
    from coop_rl.init_model_args import check_init_model, parse_populations
    from coop_rl.pretrained import PRETRAINED
    from coop_rl.tiny_model import RANDOM_MODEL_SIZES, TinyModelConfig

    args = build_parser().parse_args(["init-model", *argv.split(), "--out", str(tmp_path / "model")])
    populations = parse_populations(args.population or [])
    check_init_model(args, populations, PRETRAINED, TinyModelConfig.games, tuple(RANDOM_MODEL_SIZES))


def test_scripted_play_imports_no_torch():
    # Scripted play must answer instantly: the heavy ML stack is imported lazily, only by model players.
    code = (
        "import sys; from coop_rl.cli import main;"
        "main(['play', '--game', 'tas', '--players', 'greedy,honest', '--json']);"
        "heavy = {'torch', 'transformers', 'trl', 'vllm', 'datasets'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --json: one JSON value alone on the real stdout (its own process, not capsys), for every command that has it.
def test_play_json_alone_on_stdout():
    summary, _ = run_play_json("ipd", ["tft", "alld"], "--matches", "3")
    assert summary["matches"] == 3 and summary["welfare"] == 23.0
    assert [p["mean_return"] for p in summary["players"]] == [9.0, 14.0]


@pytest.mark.parametrize(
    "argv,check",
    [
        (
            ["tournament", "--game", "ipd", "--players", "tft,alld", "--matches", "2"],
            lambda r: r["mean_return"] == [[30.0, 9.0], [14.0, 10.0]],
        ),
        (["games"], lambda r: [g["game"] for g in r["games"]] == ["ipd", "bos", "tas", "split", "spgg"]),  # one object
        (["solve", "--game", "spgg", "--set", "reward=classic"], lambda r: r["spne"] == [0, 0, 0] and r["unique"]),
        (
            ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld,allc", "--matches", "2", "--out", "OUT"],
            lambda r: (
                [(o["opponent"], o["policy_mean_return"]) for o in r["opponents"] if o["policy_seat"] == 0]
                == [("alld", 9.0), ("allc", 30.0)]
            ),
        ),
        (["exploit", "--policy", "alld", "--game", "ipd", "--matches", "2"], lambda r: r["policy"] == "alld"),
    ],
    ids=["tournament", "games", "solve", "eval", "exploit"],
)
def test_json_alone_on_stdout(argv, check, tmp_path):
    argv = [sys.executable, "-m", "coop_rl", *(str(tmp_path / "out") if a == "OUT" else a for a in argv), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout
    result = json.loads(proc.stdout)
    assert isinstance(result, dict) and check(result)


@pytest.mark.parametrize("command", ["play", "tournament"])
def test_ctrl_c_in_a_command_exits_130_with_one_line(command, capsys, monkeypatch):
    """KeyboardInterrupt (what Ctrl-C raises) inside any command: exit status 130, one line, no "error:"."""
    from coop_rl import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert main([command, "--game", "ipd", "--players", "tft,alld"]) == 130
    out, err = capsys.readouterr()
    assert (out, err) == ("", "coop-rl: interrupted\n")


def test_no_import_circle_in_the_package():
    """Every import between coop_rl's modules (lazy ones inside functions too) points one way: no circle."""
    import ast
    from pathlib import Path

    import coop_rl
    import coop_rl.envs
    import coop_rl.eval

    modules: dict[str, Path] = {}
    for package in (coop_rl, coop_rl.envs, coop_rl.eval):
        folder = Path(package.__file__).parent
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package.__name__, *parts])] = path

    def owner(name: str) -> str | None:  # the module a dotted name lives in (coop_rl.players.hf.X -> ...players.hf)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: from the package, up level - 1 folders
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets |= {owner(f"{base}.{alias.name}") or owner(base) for alias in node.names}
        graph[name] = {t for t in targets if t and t != name}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo += graph.get(current, ())
        return False

    assert len(graph) > 30 and "coop_rl.demo" in graph["coop_rl.cli"]  # the walk sees lazy imports
    circles = sorted((a, b) for a, deps in graph.items() for b in deps if reaches(b, a))
    assert circles == []


def test_every_subcommand_of_the_parser_runs_a_command():
    """coop_rl.cli_parser lists the subcommands, coop_rl.cli.COMMANDS runs them: the two name the same ones
    (train aside, which its own parser reads)."""
    from coop_rl import cli
    from coop_rl.cli_parser import build_parser

    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(subparsers.choices) - {"train"} == set(cli.COMMANDS)


def test_json_refuses_transcripts_on_its_own_stdout(tmp_path):
    out = tmp_path / "stdout.txt"
    argv = [sys.executable, "-m", "coop_rl", "play", "--game", "ipd", "--players", "tft,alld", "--json"]
    with out.open("w") as stdout:
        proc = subprocess.run([*argv, "--transcripts", "/dev/stdout"], stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and out.read_text() == ""
    assert proc.stderr.strip() == (
        "coop-rl: error: --json prints one JSON object on stdout: write --transcripts to a file"
    )
    with out.open("w") as stdout:  # to a file beside it: one JSON object on stdout, the transcripts in the file
        proc = subprocess.run([*argv, "--transcripts", str(tmp_path / "t.jsonl")], stdout=stdout, timeout=60)
    assert proc.returncode == 0 and json.loads(out.read_text())["game"] == "ipd"
    assert (tmp_path / "t.jsonl").read_text().count("\n") == 10


def test_an_error_line_is_one_write(monkeypatch):
    # print() wrote the text and its newline apart: two ranks of an accelerate launch refusing at once interleaved
    # their lines into one
    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert main(["play", "--game", "nope", "--players", "a,b"]) == 2
    assert writes == ["coop-rl: error: unknown game 'nope'; known: ipd, bos, tas, split, spgg\n"]


def test_init_model_prints_the_folder_alone_on_stdout(tmp_path, capfd, monkeypatch):
    # scripts read the built folder from stdout: the warm start's library lines (TRL prints its loss dicts on stdout)
    # go to stderr. The build is a stand-in here that writes as TRL does (the real build: tests/test_tiny_model.py).
    import coop_rl.tiny_model as tiny_model
    from coop_rl.cli import main

    def build(out, config):
        print({"loss": 1.25, "epoch": 1.0})
        return Path(out)

    monkeypatch.setattr(tiny_model, "init_tiny_model", build)
    out = tmp_path / "model"
    assert main(["init-model", "tiny", "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert captured.out == f"{out}\n"
    assert "{'loss': 1.25, 'epoch': 1.0}" in captured.err


def test_sigterm_exits_143_with_one_line_and_cleans_up(tmp_path):
    """SIGTERM (kill, timeout, a scheduler) runs the command's `with` blocks on the way out: a killed init-model left
    its coop_rl_sft_* temporary folder behind. A real signal to a real process, in a command that holds one."""
    import signal

    code = (
        "import sys, tempfile, time\n"
        "from coop_rl import cli\n"
        "def held(args):\n"
        f"    with tempfile.TemporaryDirectory(dir={str(tmp_path)!r}):\n"
        "        sys.stderr.write('ready\\n'); sys.stderr.flush(); time.sleep(60)\n"
        "cli.COMMANDS['play'] = held\n"
        "sys.exit(cli.main())\n"
    )
    argv = [sys.executable, "-c", code, "play", "--game", "ipd", "--players", "tft,alld"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "ready\n"
    assert len(list(tmp_path.iterdir())) == 1
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and (out, err) == ("", "coop-rl: terminated\n")
    assert list(tmp_path.iterdir()) == []  # the temporary folder went with the command
