"""The plots of eval, exploit and the demo: PNG bar charts, learning curves and heatmaps (matplotlib, Agg).

* :func:`plot_returns` (``returns.png``): the policy's mean return per opponent (self-play last) with its 95%
  bootstrap CI as error bars, next to the opponent's mean return;
* :func:`plot_cooperation` (``cooperation.png``): the policy's and the opponent's cooperation per opponent, named
  by the game's ``cooperation_label`` (ipd: cooperation rate; bos: rate of choosing J; spgg: mean contribution level);
* :func:`plot_exploit` (``exploit.png``): the top exploiters' returns against the self-play baseline;
* :func:`plot_exploiter_curve` (``exploiter_curve.png``): a learned exploiter's return per training step, beside
  the policy's self-play value, the memory-one best response and the trained exploiter's evaluated return;
* :func:`plot_learning_curves`, :func:`plot_method_bars`, :func:`plot_heatmaps`: several policies side by side
  (``coop-rl demo``).

Figures use matplotlib's object API (no pyplot state, no GUI backend) and have a fixed size (no tight bounding
box): :func:`figure_size` inches at :data:`DPI`. Each function saves the figure and returns it (tests read its
bars).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coop_rl.atomic_files import atomic_path
from coop_rl.eval.results import cooperation_label, ranked_candidates, row_label, rows_with_self_play

DPI = 100
RETURNS_PNG = "returns.png"
COOPERATION_PNG = "cooperation.png"
EXPLOIT_PNG = "exploit.png"
EXPLOITER_CURVE_PNG = "exploiter_curve.png"
TOP_EXPLOITERS = 10

POLICY_COLOR = "#1f77b4"
OPPONENT_COLOR = "#ff7f0e"
SELF_PLAY_COLOR = "#2ca02c"


def figure_size(groups: int) -> tuple[float, float]:
    """The size in inches of a bar chart with ``groups`` groups of bars (wider for more groups)."""
    return (max(6.4, 1.6 + 0.9 * groups), 4.8)


# ----- one policy: eval and exploit ----------------------------------------------------------------------------
def _new_figure(groups: int):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    figure = Figure(figsize=figure_size(groups), dpi=DPI, layout="constrained")
    return figure, figure.subplots()


def _save(figure, path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=DPI, format="png")
    return figure


def plot_returns(results: dict[str, Any], path: Path) -> Any:
    """Grouped bars: the policy's mean return (with CI error bars) and the opponent's, per opponent.

    Returns the matplotlib Figure (its first axes hold the policy's bars, then the opponent's)."""
    rows = rows_with_self_play(results)
    labels = [row_label(row) for row in rows]
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
    rows = rows_with_self_play(results)
    labels = [row_label(row) for row in rows]
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
    what = cooperation_label(results["game"])
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
        label=f"seat 1 in the policy's self-play ({result['self_play_return']:.1f})",
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


def plot_exploiter_curve(result: dict[str, Any], path: Path) -> Any:
    """A learned exploiter's learning curve (its mean return per training step, ``learning_curve``), with the
    policy's self-play return, the memory-one best response's return (matrix games) and the trained exploiter's
    return in the evaluation matches as horizontal lines (``result``: ``coop-rl exploit --learn``'s object)."""
    learned = result["learned_exploiter"]
    figure, ax = _new_figure(0)
    if learned["learning_curve"]:
        steps, values = zip(*learned["learning_curve"], strict=True)
        ax.plot(steps, values, marker=".", color=OPPONENT_COLOR, label="exploiter during training")
    else:
        ax.text(0.5, 0.5, "no logged values", ha="center", va="center", transform=ax.transAxes)
    lines = [
        (learned["return"], OPPONENT_COLOR, "-.", "exploiter after training"),
        (learned["memory_one_best_return"], POLICY_COLOR, ":", f"memory-one best ({learned['memory_one_best']})"),
        (learned["self_play_return"], SELF_PLAY_COLOR, "--", "policy self-play"),
    ]
    for value, color, style, label in lines:
        if value is not None:
            ax.axhline(value, color=color, linestyle=style, label=f"{label}: {value:.1f}")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("exploiter's mean return per match")
    ax.set_title(
        f"Learned exploiter of {result['policy']} on {result['game']} ({learned['objective']})\n"
        f"{learned['max_steps']} steps from {Path(learned['model']).name}; evaluated on {learned['matches']} matches"
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
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


__all__ = [
    "COOPERATION_PNG",
    "CROSSPLAY_PNG",
    "DPI",
    "EXPLOITER_CURVE_PNG",
    "EXPLOIT_PNG",
    "LEARNING_CURVES_PNG",
    "RETURNS_PNG",
    "TOURNAMENT_PNG",
    "figure_size",
    "plot_cooperation",
    "plot_exploit",
    "plot_exploiter_curve",
    "plot_heatmaps",
    "plot_learning_curves",
    "plot_method_bars",
    "plot_returns",
]
