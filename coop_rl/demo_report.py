"""The report of ``coop-rl demo``: the table, the verdict, the plots, ``report.md`` and ``demo.json``.

From each method's evaluation (:func:`coop_rl.eval.evaluate.evaluate`'s object), the cross-play rows and each
run's ``log_history``, :func:`write_report` writes into the demo's output folder

* ``learning_curves.png``, ``tournament.png``, ``crossplay.png`` (:mod:`coop_rl.eval.plots`);
* ``report.md``: the settings, the table (method x self-play, the key opponents, the suite's mean return, the
  invalid rate), a verdict stated from the numbers, the plots, the time of each stage;
* ``demo.json``: every number of the table, the cross-play matrices, the curves, the timings.

A demo spec is read through :class:`ReportSpec` (the fields of :class:`coop_rl.demo.DemoSpec` the report needs),
so this module does not import the demo that calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from coop_rl.atomic_files import write_text_atomic

#: learning-curve metric logged by the trainer, per game (matrix games: cooperation; others: the learner's return)
COOPERATION_KEY = "rollout/cooperation_rate"
RETURN_KEY = "rollout/learner_return"


class ReportSpec(Protocol):
    """What the report reads of a demo spec (:class:`coop_rl.demo.DemoSpec`, a frozen dataclass: read-only)."""

    @property
    def game(self) -> str: ...
    @property
    def recipes(self) -> dict[str, str]: ...
    @property
    def suite(self) -> str: ...
    @property
    def key_opponents(self) -> tuple[str, ...]: ...


def _trainer_state(path: Path) -> dict[str, Any] | None:
    """The JSON object in a ``trainer_state.json``, or None where it is missing or not whole (transformers writes
    it in place, last: a run killed mid-write leaves it cut short)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders whose save finished (transformers writes trainer_state.json last,
    and it reads whole), oldest first."""
    found = [path.parent for path in run_dir.glob("checkpoint-*/trainer_state.json")]
    found = [p for p in found if p.name[11:].isdigit() and _trainer_state(p / "trainer_state.json") is not None]
    return sorted(found, key=lambda path: int(path.name[11:]))


def log_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``log_history``: ``<run>/trainer_state.json``, else that of its last complete checkpoint."""
    candidates = [run_dir / "trainer_state.json"]
    candidates += [checkpoint / "trainer_state.json" for checkpoint in complete_checkpoints(run_dir)[::-1]]
    for path in candidates:
        state = _trainer_state(path)
        if state is not None:
            return state.get("log_history", [])
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
        "self_play_policy_return": results["self_play"]["policy_mean_return"],
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


def demo_table(spec: ReportSpec, rows: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
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


#: The IPD learning result's acceptance bar (docs/algorithm.md, issue 13) per method: (the line, the row's key, at
#: least, at most), on the method's cooperation rates (:func:`summarize_method`'s row).
IPD_BAR: dict[str, tuple[tuple[str, str, float | None, float | None], ...]] = {
    "aa": (
        ("AA cooperates in self-play", "self_play", 0.8, None),
        ("AA cooperates with tft", "vs_tft", 0.8, None),
        ("AA retaliates against alld", "vs_alld", None, 0.2),
    ),
    "naive": (("naive defects in self-play", "self_play", None, 0.3),),
}


def ipd_bar_checks(method: str, row: dict[str, Any]) -> dict[str, bool]:
    """Each line of the bar for one method's row, named with its bound; a missing rate fails its line. A method
    without a bar (not in :data:`IPD_BAR`) has no lines."""
    checks: dict[str, bool] = {}
    for name, key, least, most in IPD_BAR.get(method, ()):
        value = row.get(key)
        ok = value is not None and (least is None or value >= least) and (most is None or value <= most)
        checks[f"{name} (cooperation {'>= ' + str(least) if least is not None else '<= ' + str(most)})"] = ok
    return checks


def _verdict(spec: ReportSpec, rows: dict[str, dict[str, Any]]) -> str:
    """A sentence on what the numbers show (stated from the numbers, never assumed)."""
    if spec.game != "ipd" or not {"aa", "naive"} <= set(rows):
        return (
            "No result is promised for this game on the tiny model: the numbers above are what this run learned. "
            "Compare the methods' returns against the scripted opponents and in self-play."
        )
    checks = {**ipd_bar_checks("aa", rows["aa"]), **ipd_bar_checks("naive", rows["naive"])}
    # the measured rate, unrounded: the table's two decimals show 0.795 as 0.80, which fails ">= 0.8"
    measured = [rows[method].get(key) for method in ("aa", "naive") for _, key, _, _ in IPD_BAR[method]]
    lines = [
        f"- {'yes' if ok else 'NO'}: {name}: {'missing' if value is None else f'{value:.4g}'}"
        for (name, ok), value in zip(checks.items(), measured, strict=True)
    ]
    head = (
        "Advantage Alignment learned reciprocity and the naive learner defected:"
        if all(checks.values())
        else (
            "Not every expected outcome appeared in this run (see the NO lines). One training seed is one draw: "
            "`benchmarks/learning_seeds.py` measures the result over many seeds (README, the IPD learning result):"
        )
    )
    return head + "\n\n" + "\n".join(lines)


def _write_plots(
    spec: ReportSpec,
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
    spec: ReportSpec,
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
        f"Methods trained with `coop-rl train` from the model `{settings['model']}`: "
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
        f"{settings.get('precision', 'unrecorded')}. Stages found already done (a cached model, a finished "
        "training) take about 0 s.",
    ]


def write_report(
    spec: ReportSpec,
    out: Path,
    rows: dict[str, dict[str, Any]],
    evals: dict[str, dict[str, Any]],
    cross: dict[tuple[str, str], dict[str, Any]],
    histories: dict[str, list[dict[str, Any]]],
    timings: dict[str, float],
    settings: dict[str, Any],
) -> Path:
    """report.md, the three plots and demo.json in ``out``."""
    from coop_rl.output import json_ready

    shown = _write_plots(spec, out, rows, evals, cross, histories)
    write_text_atomic(out / "report.md", "\n".join(_report_lines(spec, rows, shown, timings, settings)) + "\n")
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
    write_text_atomic(out / "demo.json", json.dumps(json_ready(payload), indent=1) + "\n")
    return out / "report.md"


def training_precisions(out_dir: Path, methods: list[str]) -> str:
    """The precision each training ran in, and the GPU where it ran on one, from its coop_rl_run.json (e.g. "aa
    float32, naive float32", "aa bfloat16 on cuda:0 (NVIDIA H200), ...": the report's CPU then only hosted it)."""
    found = []
    for method in methods:
        try:
            info = json.loads((out_dir / method / "coop_rl_run.json").read_text(encoding="utf-8"))
            device = info.get("device", "cpu")
            where = "" if device == "cpu" else f" on {device}"
            found.append(f"{method} {info['precision']['dtype']}{where}")
        except (OSError, ValueError, KeyError, TypeError):
            found.append(f"{method} unrecorded")
    return ", ".join(found)


__all__ = [
    "COOPERATION_KEY",
    "IPD_BAR",
    "RETURN_KEY",
    "ReportSpec",
    "crossplay_matrices",
    "demo_table",
    "ipd_bar_checks",
    "learning_curve",
    "log_history",
    "summarize_method",
    "training_precisions",
    "write_report",
]
