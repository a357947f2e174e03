"""The report writers of ``coop-rl eval`` and ``coop-rl exploit``: results.json, exploit.json, report.md and PNGs.

``write_eval(results, out_dir)`` writes

* ``returns.png`` and, where every row has a cooperation number, ``cooperation.png`` (:mod:`coop_rl.eval.plots`);
* ``results.json``: the :func:`coop_rl.eval.evaluate.evaluate` object plus ``"plots"`` (file names, relative to
  the output directory);
* ``report.md``: a table per opponent, a summary paragraph, the plots embedded (:mod:`coop_rl.eval.markdown`).

``write_exploit(result, out_dir)`` writes ``exploit.json``, ``exploit.png`` (the top exploiters' returns against
the self-play baseline) and puts an "Exploitability" section into report.md (created if absent; a previous
exploit section is replaced, the rest of the report is kept when results.json is about the same policy and game:
a report never shows one policy's exploitability under another's evaluation, and ``write_eval`` keeps an exploit
section on the same condition). ``write_learned_exploit(result, out_dir)`` (``coop-rl
exploit --learn``) writes ``exploiter_curve.png``, puts the ``"learned_exploiter"`` entry into results.json (beside
an evaluation of the same policy and game already there, whose report.md is then written again with it) and its
"Non-exploitability" section into report.md; a later ``write_eval`` of the same policy and game keeps the entry.
The commands pass ``REPORT_FILES`` to :func:`coop_rl.atomic_files.check_out_dir`, which tells a user, before any
match is played, that the output directory or one of the files it will hold could not be written.

The plots and the text live in :mod:`coop_rl.eval.plots` and :mod:`coop_rl.eval.markdown`; their public names are
re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coop_rl.atomic_files import write_text_atomic
from coop_rl.eval.markdown import (
    EXPLOIT_END,
    EXPLOIT_START,
    LEARNED_END,
    LEARNED_START,
    eval_markdown,
    eval_table,
    exploit_markdown,
    exploit_table,
    fmt,
    learned_exploit_markdown,
    markdown_table,
    split_exploit_section,
    text_table,
)
from coop_rl.eval.plots import (
    COOPERATION_PNG,
    CROSSPLAY_PNG,
    DPI,
    EXPLOIT_PNG,
    EXPLOITER_CURVE_PNG,
    LEARNING_CURVES_PNG,
    RETURNS_PNG,
    TOP_EXPLOITERS,
    TOURNAMENT_PNG,
    figure_size,
    plot_cooperation,
    plot_exploit,
    plot_exploiter_curve,
    plot_heatmaps,
    plot_learning_curves,
    plot_method_bars,
    plot_returns,
)
from coop_rl.eval.results import ranked_candidates, rows_with_self_play
from coop_rl.output import json_ready

#: the files ``coop-rl eval`` and ``coop-rl exploit`` write into their output folder
REPORT_FILES = ("results.json", "exploit.json", "report.md", RETURNS_PNG, COOPERATION_PNG, EXPLOIT_PNG,
                EXPLOITER_CURVE_PNG)  # fmt: skip


def write_eval(results: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write the plots, results.json and report.md into ``out_dir``; sets and returns ``results["plots"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [RETURNS_PNG]
    plot_returns(results, out / RETURNS_PNG)
    rows = rows_with_self_play(results)
    if all(row["policy_cooperation_rate"] is not None for row in rows) and all(
        row["opponent_cooperation_rate"] is not None for row in rows
    ):
        plot_cooperation(results, out / COOPERATION_PNG)
        plots.append(COOPERATION_PNG)
    else:  # an earlier evaluation's plot in this folder would sit beside results it does not show
        (out / COOPERATION_PNG).unlink(missing_ok=True)
    results["plots"] = plots
    previous = _read_results(out)
    if _about_the_same(previous, results) and "learned_exploiter" not in results:
        kept = previous.get("learned_exploiter")
        if kept is not None and _renders({**results, "learned_exploiter": kept}):
            results["learned_exploiter"] = kept  # a learned exploiter of this policy: kept
    write_text_atomic(out / "results.json", json.dumps(json_ready(results), indent=1) + "\n")
    report = out / "report.md"
    previous_exploit = split_exploit_section(_read_report(report))[1]
    text = eval_markdown(results)
    if previous_exploit and _about_the_same(
        _read_json(out / "exploit.json"), results
    ):  # the same policy's exploit section
        text += "\n" + previous_exploit
    write_text_atomic(report, text)
    return plots


def write_exploit(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write exploit.png and exploit.json into ``out_dir`` and put the exploit section into report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_exploit(result, out / EXPLOIT_PNG)
    result["plots"] = [EXPLOIT_PNG]
    write_text_atomic(out / "exploit.json", json.dumps(json_ready(result), indent=1) + "\n")
    report = out / "report.md"
    same = _about_the_same(_read_results(out), result)  # else another policy's report
    rest = split_exploit_section(_read_report(report))[0] if same else ""
    section = exploit_markdown(result)
    write_text_atomic(report, (rest.rstrip() + "\n\n" + section) if rest.strip() else section)
    return result["plots"]


def _read_results(out: Path) -> dict[str, Any]:
    """``out``/results.json, or {} when there is none (or it cannot be read)."""
    return _read_json(out / "results.json")


def _read_report(path: Path) -> str:
    """An earlier report.md, or "" when there is none or it cannot be read as text (then it is written anew)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _renders(results: dict[str, Any]) -> bool:
    """Whether the "Non-exploitability" section of ``results`` can be written: an earlier results.json is read, not
    trusted, and an entry it holds that the section cannot show is dropped rather than copied on."""
    try:
        learned_exploit_markdown(results)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return False
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _about_the_same(previous: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether an earlier results.json or exploit.json object is about ``result``'s policy, game and game
    parameters (every one, resolved): a report keeps another command's section only then, never one policy's
    exploitability under another's evaluation, nor a 10-round search beside a 20-round evaluation."""
    return about_the_same_task(previous, result["policy"], result["game"], result["game_params"])


def about_the_same_task(previous: dict[str, Any], policy: str, game: str, game_params: dict[str, Any]) -> bool:
    """Whether a results object (as read from results.json or exploit.json) is about this policy, game and resolved
    game parameters (compared as JSON writes them: a tuple reads back as a list)."""
    key = (previous.get("policy"), previous.get("game"), json_ready(previous.get("game_params")))
    return key == (policy, game, json.loads(json.dumps(json_ready(game_params))))


def write_learned_exploit(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write exploiter_curve.png, results.json's ``"learned_exploiter"`` entry and report.md's "Non-exploitability"
    section into ``out_dir`` (``result``: :func:`coop_rl.eval.learned_exploit.learned_exploit`'s object)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learned = result["learned_exploiter"]
    plot_exploiter_curve(result, out / EXPLOITER_CURVE_PNG)
    learned["plots"] = [EXPLOITER_CURVE_PNG]
    previous = _read_results(out)
    if "opponents" in previous and _about_the_same(previous, result):
        previous["learned_exploiter"] = learned  # an evaluation of the same policy: its report gains the section
        write_eval(previous, out)
        return learned["plots"]
    write_text_atomic(out / "results.json", json.dumps(json_ready(result), indent=1) + "\n")
    report = out / "report.md"
    same = _about_the_same(_read_json(out / "exploit.json"), result)  # its search's section
    rest = split_exploit_section(_read_report(report))[1] if same else ""
    section = learned_exploit_markdown(result)
    write_text_atomic(report, (rest.rstrip() + "\n\n" + section) if rest.strip() else section)
    return learned["plots"]


__all__ = [
    "COOPERATION_PNG",
    "CROSSPLAY_PNG",
    "DPI",
    "EXPLOIT_END",
    "EXPLOIT_PNG",
    "EXPLOIT_START",
    "EXPLOITER_CURVE_PNG",
    "LEARNED_END",
    "LEARNED_START",
    "LEARNING_CURVES_PNG",
    "RETURNS_PNG",
    "TOP_EXPLOITERS",
    "TOURNAMENT_PNG",
    "REPORT_FILES",
    "about_the_same_task",
    "eval_markdown",
    "eval_table",
    "exploit_markdown",
    "exploit_table",
    "figure_size",
    "fmt",
    "markdown_table",
    "plot_cooperation",
    "plot_exploit",
    "plot_exploiter_curve",
    "plot_heatmaps",
    "plot_learning_curves",
    "plot_method_bars",
    "plot_returns",
    "ranked_candidates",
    "split_exploit_section",
    "text_table",
    "write_eval",
    "write_exploit",
    "write_learned_exploit",
]
