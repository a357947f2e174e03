"""The text of results: the table helpers (plain text, markdown), eval's and exploit's report.md, terminal tables.

* :func:`fmt`, :func:`text_table`, :func:`markdown_table`: the one way a number and a table are written (eval,
  exploit, the demo and the CLI's play summary share them);
* :func:`eval_markdown`: report.md of an evaluation (settings, a table per opponent, a summary paragraph, the plots);
* :func:`exploit_markdown`: the report.md section of an exploitability search, between :data:`EXPLOIT_START` and
  :data:`EXPLOIT_END` so that a rerun replaces it (:func:`split_exploit_section`);
* :func:`learned_exploit_markdown`: the "Non-exploitability" section of a learned exploiter (``coop-rl exploit
  --learn``), between :data:`LEARNED_START` and :data:`LEARNED_END`; eval's report.md holds it when its results do;
* :func:`eval_table`, :func:`exploit_table`, :func:`learned_exploit_table`, :func:`play_table`: short plain-text
  summaries for the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from coop_rl.eval.plots import RETURNS_PNG, TOP_EXPLOITERS
from coop_rl.eval.results import cooperation_label, ranked_candidates, row_label, rows_with_self_play
from coop_rl.players import MODEL_PREFIXES

EXPLOIT_START = "<!-- exploit:start -->"
EXPLOIT_END = "<!-- exploit:end -->"
LEARNED_START = "<!-- learned-exploit:start -->"
LEARNED_END = "<!-- learned-exploit:end -->"


# ----- the table helpers --------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; "n/a" for None or NaN (a number the game or the run does not have)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: one line of headers, then one line per row; columns left-aligned, each as wide as its
    widest cell, two spaces apart (cells are written with ``str``; no trailing newline)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: the header line, the ``|---|`` rule, one line per row (a "|" inside a cell is escaped;
    cells are written with ``str``; no trailing newline)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- evaluation ---------------------------------------------------------------------------------------------
def _interval(row: dict[str, Any]) -> str:
    """A row's 95% interval, or "n/a" from a single match (its bootstrap interval has no width to speak of)."""
    low, high = row["policy_ci95"]
    return "[n/a]" if len(row.get("policy_returns", ())) == 1 else f"[{low:.2f}, {high:.2f}]"


def _ci(row: dict[str, Any]) -> str:
    return f"{row['policy_mean_return']:.2f} {_interval(row)}"


def _opponent_rows(results: dict[str, Any], key: str | None = None) -> list[list[str]]:
    """The cells of the per-opponent table; ``key="swapped"``: the seat-1 numbers of the rows that have them."""
    rows = []
    for row in rows_with_self_play(results):
        if key and key not in row:
            continue
        shown = row[key] if key else row
        name = f"{row['opponent']} (self-play)" if row.get("self_play") else row["opponent"]
        rows.append(
            [
                name,
                _ci(shown),
                fmt(shown["opponent_mean_return"]),
                fmt(shown["policy_cooperation_rate"], 3),
                fmt(shown["opponent_cooperation_rate"], 3),
                fmt(shown["welfare"]),
                fmt(shown["policy_invalid_rate"], 3),
            ]
        )
    return rows


def _self_play_return(summary: dict[str, Any]) -> float | None:
    """The policy's own self-play return; a results.json written before the key was renamed (2026-12-05) has it as
    ``self_play_return`` (a later exploit --learn re-renders such a file)."""
    return summary.get("self_play_policy_return", summary.get("self_play_return"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"


def _summary_paragraph(results: dict[str, Any], what: str) -> str:
    summary = results["summary"]
    best, worst = summary["best_opponent"], summary["worst_opponent"]
    paragraph = (
        f"Against the {_count(len(results['opponents']), 'opponent')}, `{results['policy']}` averages a return of "
        f"{fmt(summary['mean_return'])} per match (opponents: {fmt(summary['mean_opponent_return'])}; welfare "
        f"{fmt(summary['mean_welfare'])}). It scores most against `{best['opponent']}` "
        f"({fmt(best['policy_mean_return'])}) and least against `{worst['opponent']}` "
        f"({fmt(worst['policy_mean_return'])}); in self-play it gets {fmt(_self_play_return(summary))}."
    )
    if summary.get("mean_cooperation_rate") is not None:
        mean_of = what if what.startswith("mean ") else f"mean {what}"  # spgg's label is a mean already
        paragraph += (
            f" Its {mean_of} is {fmt(summary['mean_cooperation_rate'], 3)} "
            f"(opponents: {fmt(summary['mean_opponent_cooperation_rate'], 3)})."
        )
    paragraph += f" Invalid answer rate: {fmt(summary['policy_invalid_rate'], 3)}."
    if "mean_return_swapped" in summary:
        paragraph += f" With the seats swapped it averages {fmt(summary['mean_return_swapped'])}."
    return paragraph


def eval_markdown(results: dict[str, Any]) -> str:
    """report.md of an evaluation: settings, the table per opponent, a summary paragraph and the plots."""
    what = cooperation_label(results["game"])
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
        markdown_table(headers, _opponent_rows(results)),
    ]
    if results.get("symmetric"):
        lines += [
            "",
            "## Seats swapped (policy in seat 1)",
            "",
            markdown_table(headers, _opponent_rows(results, "swapped")),
        ]
    lines += ["", "## Summary", "", _summary_paragraph(results, what), "", "## Plots", ""]
    for name in results.get("plots", []):
        title = "Mean return per opponent" if name == RETURNS_PNG else f"{what.capitalize()} per opponent"
        lines += [f"![{title}]({name})", ""]
    if "learned_exploiter" in results:
        lines += [learned_exploit_markdown(results)]
    return "\n".join(lines).rstrip() + "\n"


def eval_table(results: dict[str, Any]) -> str:
    """A short plain-text table of an evaluation, for the terminal."""
    columns = ["opponent", "return", "ci95", "opp_return", "coop", "opp_coop", "welfare", "invalid"]
    rows = []
    for row in rows_with_self_play(results):
        rows.append(
            [
                row_label(row),
                fmt(row["policy_mean_return"]),
                _interval(row),
                fmt(row["opponent_mean_return"]),
                fmt(row["policy_cooperation_rate"], 3),
                fmt(row["opponent_cooperation_rate"], 3),
                fmt(row["welfare"]),
                fmt(row["policy_invalid_rate"], 3),
            ]
        )
    head = f"{results['policy']} on {results['game']} | {_count(results['matches'], 'match')} | seed {results['seed']}"
    lines = [head + " | policy in seat 0", text_table(columns, rows)]
    over = _count(len(results["opponents"]), "opponent")
    lines.append(f"mean return {fmt(results['summary']['mean_return'])} over {over}")
    if results.get("plots"):
        lines.append("plots: " + ", ".join(results["plots"]))
    return "\n".join(lines)


# ----- exploitability -----------------------------------------------------------------------------------------
def exploit_markdown(result: dict[str, Any], top: int = TOP_EXPLOITERS) -> str:
    """The report.md section of an exploitability search (between markers, so that a rerun replaces it)."""
    best = result["best"]
    ranked = ranked_candidates(result)[:top]
    rows = [
        [
            f"`{c['exploiter']}`",
            c["description"],
            f"{c['exploiter_mean_return']:.2f} [{c['exploiter_ci95'][0]:.2f}, {c['exploiter_ci95'][1]:.2f}]",
            fmt(c["policy_mean_return"]),
            fmt(c["exploiter_cooperation_rate"], 3),
        ]
        for c in ranked
    ]
    quantities = [
        ["best exploiter", f"`{best['exploiter']}`: {best['description']}"],
        ["exploiter return", fmt(result["exploiter_return"])],
        ["policy return against it", fmt(result["policy_return"])],
        ["seat 1's return in self-play (baseline)", fmt(result["self_play_return"])],
        ["gain", fmt(result["gain"])],
        ["gain per round", fmt(result["gain_per_round"], 3)],
    ]
    headers = ["exploiter", "strategy", "exploiter return [95% CI]", "policy return", "exploiter coop. rate"]
    lines = [
        EXPLOIT_START,
        f"## Exploitability of `{result['policy']}` on {result['game']}",
        "",
        f"Best response searched among the 32 deterministic memory-one strategies, their 31 end-game variants "
        f"(the second move, {_second_label(result)}, in the last round, round {result['game_params'].get('rounds')}) "
        f"and the classic suite "
        f"({len(result['candidates'])} candidates, {result['matches']} matches each, seed {result['seed']}); "
        f"the policy sits in seat 0, the exploiter in seat 1. Definition: {result['definition']}.",
        "",
        markdown_table(["quantity", "value"], quantities),
        "",
        f"Top {len(ranked)} exploiters:",
        "",
        markdown_table(headers, rows),
        "",
    ]
    for name in result.get("plots", []):
        lines += [f"![Top exploiters]({name})", ""]
    lines.append(EXPLOIT_END)
    return "\n".join(lines) + "\n"


def split_section(text: str, start_marker: str, end_marker: str) -> tuple[str, str]:
    """(a report.md text without the section between the markers, that section with its markers or '')."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return text, ""
    end += len(end_marker)
    return (text[:start].rstrip() + "\n" + text[end:].lstrip("\n")).strip() + "\n", text[start:end] + "\n"


def split_exploit_section(text: str) -> tuple[str, str]:
    """(a report.md text without its exploit section, the exploit section or '')."""
    return split_section(text, EXPLOIT_START, EXPLOIT_END)


# ----- the learned exploiter ----------------------------------------------------------------------------------
def _opponent_cell(learned: dict[str, Any], key: str) -> str:
    value = learned[key]
    return "n/a" if value is None else f"{fmt(value)} ({value - learned['self_play_return']:+.2f})"


def learned_exploit_markdown(results: dict[str, Any]) -> str:
    """The "Non-exploitability" section (between markers): the memory-one best response, the learned exploiter,
    the policy's self-play and any model or API opponent of an evaluation in ``results``, side by side (the
    policy's return and the opponent's), then the learned exploiter's learning curve."""
    learned = results["learned_exploiter"]
    best = learned["memory_one_best"]
    self_play = learned["self_play_return"]
    low, high = learned["return_ci95"]
    rows = [
        [
            f"memory-one best response (`{best}`)" if best else "memory-one best response (matrix games only)",
            fmt(learned["memory_one_policy_return"]),
            _opponent_cell(learned, "memory_one_best_return"),
        ],
        [
            f"learned exploiter ({learned['objective']}, {learned['max_steps']} steps)",
            fmt(learned["policy_return"]),
            f"{fmt(learned['return'])} [{low:.2f}, {high:.2f}] ({learned['gain']:+.2f})",
        ],
        ["the policy itself (self-play)", fmt(learned["self_play_policy_return"]), f"{fmt(self_play)} (+0.00)"],
    ]
    for row in results.get("opponents", []):  # model and API opponents of an evaluation (policy in seat 0)
        if row["opponent"].startswith(MODEL_PREFIXES):
            # its return in seat 1, the exploiter's seat (opponent_mean_return averages every other seat: spgg)
            seat1 = math.fsum(match["returns"][1] for match in row["per_match"]) / len(row["per_match"])
            rows.append([f"`{row['opponent']}` (evaluated)", _ci(row), f"{fmt(seat1)} ({seat1 - self_play:+.2f})"])
    over = learned["gain_over_memory_one"]
    lines = [
        LEARNED_START,
        f"## Non-exploitability of `{results['policy']}` on {results['game']}",
        "",
        f"An exploiter trained from `{learned['model']}` for {learned['max_steps']} steps with the project's trainer "
        f"against the frozen policy (objective `{learned['objective']}`: "
        + ("its own return" if learned["objective"] == "naive" else "its return minus the policy's")
        + f"), then played {learned['matches']} matches against it (seed {learned['seed']}; the exploiter in seat "
        f"{learned['exploiter_seat']}, the policy in the others), beside the best response among memory-one "
        "strategies, their end-game variants and the classic suite (`coop-rl exploit`) and the policy's own "
        "self-play. In parentheses: the opponent's gain over the self-play return of its seat.",
        "",
        markdown_table(["opponent", "policy return", "opponent return (gain)"], rows),
        "",
        f"The learned exploiter gains {learned['gain']:+.2f} per match over self-play"
        + ("." if over is None else f", {over:+.2f} over the memory-one best response."),
        "",
    ]
    for name in learned.get("plots", []):
        lines += [f"![Learned exploiter's learning curve]({name})", ""]
    lines.append(LEARNED_END)
    return "\n".join(lines) + "\n"


def learned_exploit_table(result: dict[str, Any]) -> str:
    """A short plain-text summary of a learned exploiter (``coop-rl exploit --learn``), for the terminal."""
    learned = result["learned_exploiter"]
    curve = learned["learning_curve"]
    lines = [
        f"learned exploiter of {result['policy']} on {result['game']} | objective {learned['objective']} | "
        f"{learned['max_steps']} steps | {learned['matches']} matches",
        f"exploiter return {fmt(learned['return'])} | policy return {fmt(learned['policy_return'])} | "
        f"policy self-play {fmt(learned['self_play_return'])} | gain {learned['gain']:+.2f}",
    ]
    if learned["memory_one_best"] is not None:
        lines.append(
            f"memory-one best response {learned['memory_one_best']}: {fmt(learned['memory_one_best_return'])} "
            f"(policy {fmt(learned['memory_one_policy_return'])}) | learned - memory-one "
            f"{learned['gain_over_memory_one']:+.2f}"
        )
    if curve:
        lines.append(f"learning curve: step {curve[0][0]} {curve[0][1]:.2f} -> step {curve[-1][0]} {curve[-1][1]:.2f}")
    lines.append(f"exploiter: {learned['exploiter']}")
    return "\n".join(lines)


def _second_label(result: dict[str, Any]) -> str:
    """The label of a matrix game's second option (D in the IPD, F under ``payoffs=akata`` and in BoS), as the
    end-game variants of an exploit search play it."""
    from coop_rl.envs import game_class

    return game_class(result["game"])(**result["game_params"]).labels[1]


def exploit_table(result: dict[str, Any], top: int = 5) -> str:
    """A short plain-text summary of an exploitability search, for the terminal."""
    best = result["best"]
    lines = [
        f"{result['policy']} on {result['game']} | {_count(result['matches'], 'match')} | "
        f"{len(result['candidates'])} candidates",
        f"best exploiter  {best['exploiter']}: {best['description']}",
        f"exploiter return {result['exploiter_return']:.2f} | policy return {result['policy_return']:.2f} | "
        f"seat 1 in self-play {result['self_play_return']:.2f} | gain {result['gain']:.2f} "
        f"({result['gain_per_round']:.3f} per round)",
        "top exploiters:",
    ]
    for c in ranked_candidates(result)[:top]:
        lines.append(
            f"  {c['exploiter']:<14} {c['exploiter_mean_return']:8.2f}  (policy gets {c['policy_mean_return']:.2f})"
        )
    return "\n".join(lines)


# ----- play ---------------------------------------------------------------------------------------------------
def play_table(summary: dict[str, Any], seed: int) -> str:
    """``coop-rl play``'s summary for the terminal: a line naming the run, a row per seat, the welfare and every
    aggregate metric (``summary``: :func:`coop_rl.runner.summarize`'s object)."""
    extra = [key for key in ("cooperation_rate", "mean_contribution", "mean_claim") if key in summary["players"][0]]
    rows = [
        [str(seat), p["spec"], f"{p['mean_return']:.2f}", f"{p['invalid_rate']:.3f}", *(f"{p[k]:.3f}" for k in extra)]
        for seat, p in enumerate(summary["players"])
    ]
    lines = [f"game {summary['game']} | {_count(summary['matches'], 'match')} | seed {seed}"]
    lines.append(text_table(["seat", "player", "mean_return", "invalid_rate", *extra], rows))
    lines.append(f"welfare {summary['welfare']:.2f}")
    for key, value in summary["metrics"].items():
        shown = "[" + ", ".join(f"{v:.3f}" for v in value) + "]" if isinstance(value, list) else f"{value:.3f}"
        lines.append(f"{key} {shown}")
    return "\n".join(lines)


__all__ = [
    "EXPLOIT_END",
    "EXPLOIT_START",
    "LEARNED_END",
    "LEARNED_START",
    "eval_markdown",
    "eval_table",
    "exploit_markdown",
    "exploit_table",
    "fmt",
    "learned_exploit_markdown",
    "learned_exploit_table",
    "markdown_table",
    "play_table",
    "split_exploit_section",
    "split_section",
    "text_table",
]
