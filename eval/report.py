"""Reports of ``coop-rl eval`` and ``coop-rl exploit``: results.json, report.md and PNG plots (matplotlib, Agg).

``write_eval(results, out_dir)`` writes

* ``returns.png``: the policy's mean return per opponent (self-play last) with its 95% bootstrap CI as error
  bars, next to the opponent's mean return;
* ``cooperation.png`` (ipd, bos; spgg: contribution level): the policy's and the opponent's cooperation rate
  per opponent;
* ``results.json``: the :func:`coop_rl.eval.evaluate.evaluate` object plus ``"plots"`` (file names, relative to
  the output directory);
* ``report.md``: a table per opponent, a summary paragraph, the plots embedded.

``write_exploit(result, out_dir)`` writes ``exploit.json``, ``exploit.png`` (the top exploiters' returns against
the self-play baseline) and puts an "Exploitability" section into report.md (created if absent; a previous
exploit section is replaced, the rest of the report is kept). Figures have a fixed size (no tight bounding box):
:func:`figure_size` inches at :data:`DPI`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DPI = 100
RETURNS_PNG = "returns.png"
COOPERATION_PNG = "cooperation.png"
EXPLOIT_PNG = "exploit.png"
EXPLOIT_START = "<!-- exploit:start -->"
EXPLOIT_END = "<!-- exploit:end -->"
TOP_EXPLOITERS = 10

POLICY_COLOR = "#1f77b4"
OPPONENT_COLOR = "#ff7f0e"
SELF_PLAY_COLOR = "#2ca02c"


def figure_size(groups: int) -> tuple[float, float]:
    """The size in inches of a bar chart with ``groups`` groups of bars (wider for more groups)."""
    return (max(6.4, 1.6 + 0.9 * groups), 4.8)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cooperation_label(game: str) -> str:
    return "mean contribution level" if game == "spgg" else "cooperation rate"


# ----- plots --------------------------------------------------------------------------------------------------
def _new_figure(groups: int):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    figure = Figure(figsize=figure_size(groups), dpi=DPI, layout="constrained")
    return figure, figure.subplots()


def _save(figure, path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")
    return figure


def _rows_with_self_play(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [*results["opponents"], results["self_play"]]


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    return ["self-play" if row.get("self_play") else row["opponent"] for row in rows]


def plot_returns(results: dict[str, Any], path: Path) -> Any:
    """Grouped bars: the policy's mean return (with CI error bars) and the opponent's, per opponent.

    Returns the matplotlib Figure (its first axes hold the policy's bars, then the opponent's)."""
    rows = _rows_with_self_play(results)
    labels = _labels(rows)
    figure, ax = _new_figure(len(rows))
    x = list(range(len(rows)))
    width = 0.4
    means = [row["policy_mean_return"] for row in rows]
    errors = [
        [max(0.0, m - row["policy_ci95"][0]) for m, row in zip(means, rows, strict=True)],
        [max(0.0, row["policy_ci95"][1] - m) for m, row in zip(means, rows, strict=True)],
    ]
    bars = ax.bar(
        [i - width / 2 for i in x],
        means,
        width,
        yerr=errors,
        capsize=4,
        color=POLICY_COLOR,
        label=f"policy {results['policy']} (95% bootstrap CI)",
    )
    ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=2, fontsize=8)
    opponent = ax.bar(
        [i + width / 2 for i in x],
        [row["opponent_mean_return"] for row in rows],
        width,
        color=OPPONENT_COLOR,
        label="opponent",
    )
    ax.bar_label(opponent, labels=[f"{row['opponent_mean_return']:.1f}" for row in rows], padding=2, fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlabel("opponent")
    ax.set_ylabel("mean return per match")
    ax.set_title(
        f"{results['policy']} on {results['game']}: mean return per opponent\n"
        f"({results['matches']} matches, policy in seat 0)"
    )
    top = max([row["policy_ci95"][1] for row in rows] + [row["opponent_mean_return"] for row in rows] + [1.0])
    bottom = min([row["policy_ci95"][0] for row in rows] + [row["opponent_mean_return"] for row in rows] + [0.0])
    ax.set_ylim(bottom * 1.15, top * 1.18)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_cooperation(results: dict[str, Any], path: Path) -> Any:
    """Grouped bars: the policy's and the opponent's cooperation rate (spgg: contribution level) per opponent."""
    rows = _rows_with_self_play(results)
    labels = _labels(rows)
    figure, ax = _new_figure(len(rows))
    x = list(range(len(rows)))
    width = 0.4
    policy = [row["policy_cooperation_rate"] for row in rows]
    opponent = [row["opponent_cooperation_rate"] for row in rows]
    bars = ax.bar([i - width / 2 for i in x], policy, width, color=POLICY_COLOR, label=f"policy {results['policy']}")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in policy], padding=2, fontsize=8)
    bars = ax.bar([i + width / 2 for i in x], opponent, width, color=OPPONENT_COLOR, label="opponent")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in opponent], padding=2, fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlabel("opponent")
    what = _cooperation_label(results["game"])
    ax.set_ylabel(what)
    ax.set_ylim(0.0, 1.25)
    ax.set_title(
        f"{results['policy']} on {results['game']}: {what} per opponent\n"
        f"({results['matches']} matches, policy in seat 0)"
    )
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_exploit(result: dict[str, Any], path: Path, top: int = TOP_EXPLOITERS) -> Any:
    """Horizontal bars: the top exploiters' mean returns (and the policy's against each), with the self-play line."""
    ranked = ranked_candidates(result)[:top]
    figure, ax = _new_figure(len(ranked))
    y = list(range(len(ranked)))[::-1]  # the best at the top
    height = 0.4
    exploiter = [c["exploiter_mean_return"] for c in ranked]
    bars = ax.barh([i + height / 2 for i in y], exploiter, height, color=OPPONENT_COLOR, label="exploiter")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in exploiter], padding=2, fontsize=8)
    policy = [c["policy_mean_return"] for c in ranked]
    bars = ax.barh([i - height / 2 for i in y], policy, height, color=POLICY_COLOR, label=f"policy {result['policy']}")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in policy], padding=2, fontsize=8)
    ax.axvline(
        result["self_play_return"],
        color=SELF_PLAY_COLOR,
        linestyle="--",
        label=f"policy self-play ({result['self_play_return']:.1f})",
    )
    ax.set_yticks(y, [c["exploiter"] for c in ranked], fontsize=8)
    ax.set_xlabel("mean return per match")
    ax.set_ylabel("exploiter (best first)")
    right = max(exploiter + policy + [result["self_play_return"], 1.0])
    ax.set_xlim(min(0.0, *exploiter, *policy) * 1.1, right * 1.15)
    ax.set_title(
        f"Best responses to {result['policy']} on {result['game']}: gain {result['gain']:.2f}\n"
        f"(top {len(ranked)} of {len(result['candidates'])})"
    )
    figure.legend(loc="outside lower center", fontsize=8, ncols=3)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


# ----- several policies side by side (coop-rl demo) ------------------------------------------------------------
LEARNING_CURVES_PNG = "learning_curves.png"
TOURNAMENT_PNG = "tournament.png"
CROSSPLAY_PNG = "crossplay.png"
METHOD_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def plot_learning_curves(
    curves: dict[str, Sequence[tuple[float, float]]], path: Path, ylabel: str, title: str, ylim: tuple | None = None
) -> Any:
    """One line per method: ``curves[method]`` is a list of (training step, value) points."""
    figure, ax = _new_figure(0)
    for index, (name, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=".", color=METHOD_COLORS[index % len(METHOD_COLORS)], label=name)
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    if any(curves.values()):
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no logged values", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_method_bars(
    values: dict[str, Sequence[float | None]],
    labels: Sequence[str],
    path: Path,
    ylabel: str,
    title: str,
    ylim: tuple | None = None,
) -> Any:
    """Grouped bars: for each label (an opponent), one bar per method (``values[method][i]``; None = no bar)."""
    figure, ax = _new_figure(len(labels))
    methods = list(values)
    width = 0.8 / max(1, len(methods))
    for index, name in enumerate(methods):
        xs = [i - 0.4 + width * (index + 0.5) for i in range(len(labels))]
        heights = [float("nan") if v is None else v for v in values[name]]
        bars = ax.bar(xs, heights, width, color=METHOD_COLORS[index % len(METHOD_COLORS)], label=name)
        ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values[name]], padding=2, fontsize=7)
    ax.set_xticks(list(range(len(labels))), list(labels), rotation=30, ha="right")
    ax.set_xlabel("opponent")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, ncols=len(methods))
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_heatmaps(
    matrices: dict[str, Sequence[Sequence[float | None]]], names: Sequence[str], path: Path, title: str
) -> Any:
    """Cross-play heatmaps, one panel per quantity: ``matrices[quantity][i][j]`` is what the row policy ``i``
    gets (or does) against the column policy ``j`` (the diagonal is self-play)."""
    from matplotlib.figure import Figure

    panels = list(matrices)
    figure = Figure(figsize=(4.2 * len(panels) + 0.8, 4.2), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, quantity in zip(axes, panels, strict=True):
        data = [[float("nan") if v is None else v for v in row] for row in matrices[quantity]]
        image = ax.imshow(data, cmap="viridis")
        finite = [v for row in data for v in row if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0.0
        for i, row in enumerate(data):
            for j, value in enumerate(row):
                shown = "n/a" if math.isnan(value) else f"{value:.2f}"
                color = "black" if not math.isnan(value) and value > middle else "white"  # readable on viridis
                ax.text(j, i, shown, ha="center", va="center", color=color)
        ax.set_xticks(list(range(len(names))), list(names))
        ax.set_yticks(list(range(len(names))), list(names))
        ax.set_xlabel("co-player")
        ax.set_ylabel("policy")
        ax.set_title(quantity, fontsize=10)
        figure.colorbar(image, ax=ax, shrink=0.8)
    figure.suptitle(title)
    return _save(figure, path)


# ----- markdown -----------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _ci(row: dict[str, Any]) -> str:
    low, high = row["policy_ci95"]
    return f"{row['policy_mean_return']:.2f} [{low:.2f}, {high:.2f}]"


def _opponent_rows(results: dict[str, Any], key: str | None = None) -> list[list[str]]:
    rows = []
    for row in _rows_with_self_play(results):
        shown = row[key] if key and key in row else row
        if key and key not in row:
            continue
        name = f"{row['opponent']} (self-play)" if row.get("self_play") else row["opponent"]
        rows.append(
            [
                name,
                _ci(shown),
                _fmt(shown["opponent_mean_return"]),
                _fmt(shown["policy_cooperation_rate"], 3),
                _fmt(shown["opponent_cooperation_rate"], 3),
                _fmt(shown["welfare"]),
                _fmt(shown["policy_invalid_rate"], 3),
            ]
        )
    return rows


def eval_markdown(results: dict[str, Any]) -> str:
    """report.md of an evaluation: settings, the table per opponent, a summary paragraph and the plots."""
    summary = results["summary"]
    what = _cooperation_label(results["game"])
    headers = [
        "opponent",
        "policy return [95% CI]",
        "opponent return",
        f"policy {what}",
        f"opponent {what}",
        "welfare",
        "policy invalid rate",
    ]
    params = ", ".join(f"{k}={v}" for k, v in results["game_params"].items())
    lines = [
        f"# Evaluation of `{results['policy']}` on {results['game']}",
        "",
        f"{results['matches']} matches per opponent, seed {results['seed']}, game parameters: {params}.",
        f"The policy sits in seat 0 (of {results['seats']}); returns are undiscounted sums of rewards per match, "
        "averaged over matches; the interval is a 95% percentile bootstrap of the policy's mean return "
        f"({results['ci']['resamples']} seeded resamples; width 0 when every match gives the same return).",
        "",
        "## Results per opponent (policy in seat 0)",
        "",
        *_table(headers, _opponent_rows(results)),
    ]
    if results.get("symmetric"):
        lines += [
            "",
            "## Seats swapped (policy in seat 1)",
            "",
            *_table(headers, _opponent_rows(results, "swapped")),
        ]
    best, worst = summary["best_opponent"], summary["worst_opponent"]
    paragraph = (
        f"Against the {len(results['opponents'])} opponents, `{results['policy']}` averages a return of "
        f"{_fmt(summary['mean_return'])} per match (opponents: {_fmt(summary['mean_opponent_return'])}; welfare "
        f"{_fmt(summary['mean_welfare'])}). It scores most against `{best['opponent']}` "
        f"({_fmt(best['policy_mean_return'])}) and least against `{worst['opponent']}` "
        f"({_fmt(worst['policy_mean_return'])}); in self-play it gets {_fmt(summary['self_play_return'])}."
    )
    if summary.get("mean_cooperation_rate") is not None:
        paragraph += (
            f" Its mean {what} is {_fmt(summary['mean_cooperation_rate'], 3)} "
            f"(opponents: {_fmt(summary['mean_opponent_cooperation_rate'], 3)})."
        )
    paragraph += f" Invalid answer rate: {_fmt(summary['policy_invalid_rate'], 3)}."
    if "mean_return_swapped" in summary:
        paragraph += f" With the seats swapped it averages {_fmt(summary['mean_return_swapped'])}."
    lines += ["", "## Summary", "", paragraph, "", "## Plots", ""]
    for name in results.get("plots", []):
        title = "Mean return per opponent" if name == RETURNS_PNG else f"{what.capitalize()} per opponent"
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def ranked_candidates(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidates best first (the exploit's own order: return, then the policy's lowest return, then search order)."""
    order = range(len(result["candidates"]))
    ranked = sorted(
        order,
        key=lambda i: (
            -result["candidates"][i]["exploiter_mean_return"],
            result["candidates"][i]["policy_mean_return"],
            i,
        ),
    )
    return [result["candidates"][i] for i in ranked]


def exploit_markdown(result: dict[str, Any], top: int = TOP_EXPLOITERS) -> str:
    """The report.md section of an exploitability search (between markers, so that a rerun replaces it)."""
    best = result["best"]
    ranked = ranked_candidates(result)[:top]
    rows = [
        [
            f"`{c['exploiter']}`",
            c["description"],
            f"{c['exploiter_mean_return']:.2f} [{c['exploiter_ci95'][0]:.2f}, {c['exploiter_ci95'][1]:.2f}]",
            _fmt(c["policy_mean_return"]),
            _fmt(c["exploiter_cooperation_rate"], 3),
        ]
        for c in ranked
    ]
    lines = [
        EXPLOIT_START,
        f"## Exploitability of `{result['policy']}` on {result['game']}",
        "",
        f"Best response searched among the 32 deterministic memory-one strategies and the classic suite "
        f"({len(result['candidates'])} candidates, {result['matches']} matches each, seed {result['seed']}); "
        f"the policy sits in seat 0, the exploiter in seat 1. Definition: {result['definition']}.",
        "",
        *_table(
            ["quantity", "value"],
            [
                ["best exploiter", f"`{best['exploiter']}`: {best['description']}"],
                ["exploiter return", _fmt(result["exploiter_return"])],
                ["policy return against it", _fmt(result["policy_return"])],
                ["self-play return (baseline)", _fmt(result["self_play_return"])],
                ["gain", _fmt(result["gain"])],
                ["gain per round", _fmt(result["gain_per_round"], 3)],
            ],
        ),
        "",
        f"Top {len(ranked)} exploiters:",
        "",
        *_table(["exploiter", "strategy", "exploiter return [95% CI]", "policy return", "exploiter coop. rate"], rows),
        "",
    ]
    for name in result.get("plots", []):
        lines += [f"![Top exploiters]({name})", ""]
    lines.append(EXPLOIT_END)
    return "\n".join(lines) + "\n"


def _split_exploit_section(text: str) -> tuple[str, str]:
    """(report without the exploit section, the exploit section or '')."""
    start, end = text.find(EXPLOIT_START), text.find(EXPLOIT_END)
    if start < 0 or end < start:
        return text, ""
    end += len(EXPLOIT_END)
    return (text[:start].rstrip() + "\n" + text[end:].lstrip("\n")).strip() + "\n", text[start:end] + "\n"


# ----- writers ------------------------------------------------------------------------------------------------
def _json_ready(value: Any) -> Any:
    """Replace NaN/inf by null so that results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_eval(results: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write the plots, results.json and report.md into ``out_dir``; sets and returns ``results["plots"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [RETURNS_PNG]
    plot_returns(results, out / RETURNS_PNG)
    rows = _rows_with_self_play(results)
    if all(row["policy_cooperation_rate"] is not None for row in rows) and all(
        row["opponent_cooperation_rate"] is not None for row in rows
    ):
        plot_cooperation(results, out / COOPERATION_PNG)
        plots.append(COOPERATION_PNG)
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(_json_ready(results), indent=1) + "\n", encoding="utf-8")
    report = out / "report.md"
    previous_exploit = _split_exploit_section(report.read_text(encoding="utf-8"))[1] if report.exists() else ""
    text = eval_markdown(results)
    if previous_exploit:  # keep an exploit section written earlier into this directory
        text += "\n" + previous_exploit
    report.write_text(text, encoding="utf-8")
    return plots


def write_exploit(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write exploit.png and exploit.json into ``out_dir`` and put the exploit section into report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_exploit(result, out / EXPLOIT_PNG)
    result["plots"] = [EXPLOIT_PNG]
    (out / "exploit.json").write_text(json.dumps(_json_ready(result), indent=1) + "\n", encoding="utf-8")
    report = out / "report.md"
    rest = _split_exploit_section(report.read_text(encoding="utf-8"))[0] if report.exists() else ""
    section = exploit_markdown(result)
    report.write_text((rest.rstrip() + "\n\n" + section) if rest.strip() else section, encoding="utf-8")
    return result["plots"]


def eval_table(results: dict[str, Any]) -> str:
    """A short plain-text table of an evaluation, for the terminal."""
    columns = ["opponent", "return", "ci95", "opp_return", "coop", "opp_coop", "welfare", "invalid"]
    rows = []
    for row in _rows_with_self_play(results):
        name = "self-play" if row.get("self_play") else row["opponent"]
        low, high = row["policy_ci95"]
        rows.append(
            [
                name,
                f"{row['policy_mean_return']:.2f}",
                f"[{low:.2f}, {high:.2f}]",
                f"{row['opponent_mean_return']:.2f}",
                _fmt(row["policy_cooperation_rate"], 3),
                _fmt(row["opponent_cooperation_rate"], 3),
                f"{row['welfare']:.2f}",
                f"{row['policy_invalid_rate']:.3f}",
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    summary = results["summary"]
    head = f"{results['policy']} on {results['game']} | {results['matches']} matches | seed {results['seed']}"
    lines = [head + " | policy in seat 0"]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"mean return {_fmt(summary['mean_return'])} over {len(results['opponents'])} opponents")
    if results.get("plots"):
        lines.append("plots: " + ", ".join(results["plots"]))
    return "\n".join(lines)


def exploit_table(result: dict[str, Any], top: int = 5) -> str:
    """A short plain-text summary of an exploitability search, for the terminal."""
    best = result["best"]
    lines = [
        f"{result['policy']} on {result['game']} | {result['matches']} matches | "
        f"{len(result['candidates'])} candidates",
        f"best exploiter  {best['exploiter']}: {best['description']}",
        f"exploiter return {result['exploiter_return']:.2f} | policy return {result['policy_return']:.2f} | "
        f"self-play {result['self_play_return']:.2f} | gain {result['gain']:.2f} "
        f"({result['gain_per_round']:.3f} per round)",
        "top exploiters:",
    ]
    for c in ranked_candidates(result)[:top]:
        lines.append(
            f"  {c['exploiter']:<12} {c['exploiter_mean_return']:8.2f}  (policy gets {c['policy_mean_return']:.2f})"
        )
    return "\n".join(lines)


__all__ = [
    "CROSSPLAY_PNG",
    "DPI",
    "LEARNING_CURVES_PNG",
    "TOURNAMENT_PNG",
    "eval_markdown",
    "eval_table",
    "exploit_markdown",
    "exploit_table",
    "figure_size",
    "plot_cooperation",
    "plot_exploit",
    "plot_heatmaps",
    "plot_learning_curves",
    "plot_method_bars",
    "plot_returns",
    "write_eval",
    "write_exploit",
]
