"""The ``coop-rl`` command line (also ``python -m coop_rl``): it parses the arguments and calls the modules.

Each ``cmd_*`` checks its arguments and calls the module that does the work: ``train`` calls
``coop_rl.train.load_recipe`` then ``coop_rl.train.train`` (as ``demo`` does, through ``coop_rl.demo``), ``play``
the runner, ``eval``/``exploit``/``tournament`` ``coop_rl.eval``. Subcommands import what they need lazily:
playing scripted strategies never imports torch or transformers. A user error (a ``coop_rl.errors.UsageError``,
an unknown game, a bad spec, malformed --set, a missing file) prints one line on stderr and exits 2; Ctrl-C in any
command prints one line and exits 130. The options live in ``coop_rl.cli_parser``; only ``coop_rl.__main__``
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coop_rl.cli_parser import build_parser, learn_options
from coop_rl.config_checks import MAX_MATCHES  # the most matches one command plays (results stay in memory)
from coop_rl.errors import UsageError
from coop_rl.output import json_only_stdout, print_json, send_library_logs_to_stderr


def _parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"malformed --set {item!r}: expected key=value")
        if key.strip() in params:  # as a recipe refuses a key given twice: which value was meant is unknown
            raise UsageError(f"--set {key.strip()} given twice ({params[key.strip()]!r} and {value.strip()!r})")
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
        if "rounds" in params and str(params["rounds"]).strip() != str(args.rounds):
            raise UsageError(f"--set rounds={params['rounds']} but --rounds {args.rounds}: give one")
        params["rounds"] = args.rounds
    if seats is not None and "players" in cls.PARAMS:
        if "players" in params and str(params["players"]) != str(seats):
            raise UsageError(f"--set players={params['players']} but {seats} player specs were given")
        params["players"] = seats
    if not 1 <= args.matches <= MAX_MATCHES:
        raise UsageError(f"--matches must be between 1 and {MAX_MATCHES:,}, got {args.matches}")
    cls(**params)  # converts and checks every value
    return params


def _sampling(args: argparse.Namespace) -> Any:
    from coop_rl.players import SamplingConfig

    if not 0.0 <= args.temperature <= 100.0:  # also refuses nan
        raise UsageError(f"--temperature must be between 0 and 100, got {args.temperature}")
    if not 0.0 < args.top_p <= 1.0:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)


def _check_out_file(path: str | None, flag: str) -> str | None:
    """``path`` if a file can be written there, checked before any match is played (the file is written after)."""
    if path is None:
        return None
    target = Path(path)
    if not path.strip():
        raise UsageError(f"{flag} needs a file path")
    if target.is_dir():
        raise UsageError(f"cannot write {flag} {path!r}: it is a directory")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {flag} {path!r}: {target.parent} is not an existing directory")
    # A regular file is written beside itself and renamed over (coop_rl.atomic_files); anything else directly.
    special = target.exists() and not target.is_file()
    needs = target if special else Path(os.path.realpath(target)).parent
    where = "it" if special else str(needs)
    if not os.access(needs, os.W_OK | (os.X_OK if needs.is_dir() else 0)):
        raise UsageError(f"cannot write {flag} {path!r}: {where} is not writable")
    return path


def _is_stdout(path: str) -> bool:
    """Whether ``path`` is the file standard output writes to (``/dev/stdout``, ``/proc/self/fd/1``, ...)."""
    try:
        mine, theirs = os.fstat(sys.stdout.fileno()), os.stat(path)
    except (OSError, ValueError):  # no such file yet, or a stdout without a descriptor
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on stderr: for a person at a terminal, not under --json or when stderr is a file."""
    return not args.json and sys.stderr.isatty()


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
    if args.group_size < 1:
        raise UsageError(f"--group-size must be >= 1, got {args.group_size}")
    _check_out_file(args.transcripts, "--transcripts")
    if args.json and args.transcripts and _is_stdout(args.transcripts):
        raise UsageError("--json prints one JSON object on stdout: write --transcripts to a file")
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
        progress=_show_progress(args),
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
    result = round_robin(
        args.game,
        specs,
        matches=args.matches,
        seed=args.seed,
        game_params=params,
        sampling=_sampling(args),
        constrain=True if args.constrain_answers else None,
    )
    return _print_result(args, result.to_dict(), result.table)


# ----- eval and exploit ---------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from coop_rl.atomic_files import check_out_dir
    from coop_rl.envs import game_class
    from coop_rl.eval.report import REPORT_FILES
    from coop_rl.eval.suites import resolve_opponents

    params = _game_params(args, game_class(args.game))
    opponents = resolve_opponents(args.opponents, args.game)  # a SuiteError is a UsageError
    out = check_out_dir(args.out, files=REPORT_FILES)
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
        progress=_show_progress(args),
    )
    return _print_result(args, results, lambda: eval_table(results))


def cmd_exploit(args: argparse.Namespace) -> int:
    from coop_rl.atomic_files import check_out_dir
    from coop_rl.envs import game_class
    from coop_rl.eval.exploit import exploit
    from coop_rl.eval.learned_exploit import learned_exploit
    from coop_rl.eval.markdown import exploit_table, learned_exploit_table
    from coop_rl.eval.report import REPORT_FILES

    params = _game_params(args, game_class(args.game))
    if args.candidates_per_run < 1:
        raise UsageError(f"--candidates-per-run must be >= 1, got {args.candidates_per_run}")
    out = check_out_dir(args.out, files=REPORT_FILES)
    common = {"matches": args.matches, "seed": args.seed, "game_params": params, "sampling": _sampling(args),
              "candidates_per_run": args.candidates_per_run}  # fmt: skip
    learn = learn_options(args)  # None without --learn
    if learn is not None:  # train an exploiter (eval/learned_exploit.py), any game
        result = learned_exploit(args.policy, args.game, out, **learn, **common)
        return _print_result(args, result, lambda: learned_exploit_table(result))
    # an ExploitError (not a matrix game) is a UsageError
    result = exploit(args.policy, args.game, out_dir=out, progress=_show_progress(args), **common)
    return _print_result(args, result, lambda: exploit_table(result))


# ----- games --------------------------------------------------------------------------------------------------
def cmd_games(args: argparse.Namespace) -> int:
    from coop_rl.envs import GAMES, describe_game, games_text

    described = [describe_game(name) for name in (GAMES if args.game is None else [args.game])]
    return _print_result(args, {"games": described}, lambda: games_text(described))


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

    from coop_rl.init_model_args import check_init_model, parse_populations
    from coop_rl.pretrained import PRETRAINED, PretrainedSourceError
    from coop_rl.tiny_model import RANDOM_MODEL_SIZES, TinyModelConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    populations = parse_populations(args.population or [])
    games = check_init_model(args, populations, PRETRAINED, TinyModelConfig.games, tuple(RANDOM_MODEL_SIZES))
    given = {"data_scale": args.data_scale} if args.data_scale is not None else {}  # the rest: each kind's defaults
    given.update({"games": games} if games else {})
    seed, precision = (0 if args.seed is None else args.seed), (args.precision or "auto")
    try:  # library output (TRL's loss lines; DeepSpeed's logger, bound to the stdout of its import) to stderr:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the folder's path alone, for scripts
            out = _build_model(args, populations, games, given, seed, precision)
    except (FileExistsError, ValueError, PretrainedSourceError) as error:
        raise UsageError(str(error)) from None
    print(out)
    return 0


def _build_model(args, populations, games, given, seed: int, precision: str) -> Path:
    """``init-model``'s build of ``args.kind`` into ``args.out`` (the options already checked)."""
    from coop_rl.pretrained import PRETRAINED, PretrainedWarmStart, init_pretrained_model
    from coop_rl.tiny_model import RANDOM_MODEL_SIZES, TinyModelConfig, init_random_model, init_tiny_model

    if args.kind in PRETRAINED:  # a real pretrained model, converted from its installed wheel
        warm = PretrainedWarmStart(seed=seed, **given) if args.warm_start else None
        return init_pretrained_model(
            args.out, args.kind, precision=precision, constrain_answers=not args.unconstrained, warm_start=warm
        )
    if args.kind in RANDOM_MODEL_SIZES:  # random initialisation, no warm start (benchmarks; no TRL needed)
        return init_random_model(args.out, args.kind, seed=seed)
    # tiny (check_init_model refused any other kind)
    return init_tiny_model(args.out, TinyModelConfig(seed=seed, precision=precision, populations=populations, **given))


# ----- train --------------------------------------------------------------------------------------------------
def cmd_train(argv: Sequence[str]) -> int:
    """``coop-rl train --config RECIPE.yaml [--key value ...]`` (also under ``accelerate launch``): coop_rl.train."""
    import logging

    from coop_rl.train import check_no_earlier_run, load_recipe, train

    try:
        config = load_recipe(argv)  # every check, before any weights load
    except UsageError as error:
        if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
            raise
        raise UsageError(f"{error} (start from a recipe: coop-rl train --config recipes/ipd/aa_tiny.yaml)") from None
    check_no_earlier_run(config)
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
#: The function each subcommand of ``coop_rl.cli_parser.build_parser`` runs (``train`` has its own parser: _command).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "play": cmd_play,
    "tournament": cmd_tournament,
    "eval": cmd_eval,
    "exploit": cmd_exploit,
    "games": cmd_games,
    "solve": cmd_solve,
    "init-model": cmd_init_model,
    "demo": cmd_demo,
}


def _command(argv: list[str]) -> tuple[Callable[[], int], bool]:
    """The command to run, and whether it prints JSON alone on stdout (``--json``)."""
    if argv and argv[0] == "train":  # the trainer's own parser (TrlParser over AAConfig) reads the rest
        if any(flag in argv[1:] for flag in ("-h", "--help")):
            from coop_rl.train import print_recipe_help

            return lambda: print_recipe_help() or 0, False
        return lambda: cmd_train(argv[1:]), False
    args = build_parser().parse_args(argv)
    return lambda: COMMANDS[args.command](args), getattr(args, "json", False)


def _say(line: str) -> None:
    """One line on stderr in one write: print() writes the text and its newline apart, so the ranks of an
    ``accelerate launch`` refusing at once interleaved their lines into one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


#: the system's refusals of a write: the machine's state, not a bug of ours (any other OSError keeps its traceback)
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def _run(run: Callable[[], int], json_mode: bool, is_program: bool) -> int:
    """Run a command; a user error is one line on stderr and exit status 2 (an API player's failure, or a write the
    system refused: one line and 1)."""
    from coop_rl.envs import GameConfigError, UnknownGameError
    from coop_rl.players import PlayerSpecError
    from coop_rl.players.openai_player import OpenAIPlayerError

    try:
        with json_only_stdout(enabled=json_mode, until_exit=is_program):  # --json: stdout holds the JSON alone
            return run()
    except (UsageError, GameConfigError, UnknownGameError, PlayerSpecError, FileNotFoundError) as error:
        _say(f"coop-rl: error: {error}")
        return 2
    except OpenAIPlayerError as error:  # an API opponent failed after its retries: one line, no traceback
        _say(f"coop-rl: error: {error}")
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stderr.close()
        return 0
    except OSError as error:  # a write the system refused (a full disk, a read-only folder): one line, no traceback
        if error.errno not in REFUSED_WRITES:
            raise
        _say(f"coop-rl: error: {error}")
        return 1


class Terminated(BaseException):
    """SIGTERM (``kill``, a job scheduler, ``timeout``) as an exception: the ``with`` blocks on the way out run, so
    temporary folders go and atomic writes are not left half-made, as on Ctrl-C (the default action kills the
    process where it stands)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    is_program = argv is None  # called as the program (console script, python -m): the process ends after this
    argv = list(sys.argv[1:] if argv is None else argv)
    send_library_logs_to_stderr()  # before anything imports vLLM (see coop_rl/output.py)
    if is_program:
        import signal

        signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(*_command(argv), is_program)
    except KeyboardInterrupt:  # Ctrl-C in any command, a training included: one line, the shell's status for SIGINT
        _say("coop-rl: interrupted")
        return 130
    except Terminated:  # the shell's status for SIGTERM
        _say("coop-rl: terminated")
        return 143


if __name__ == "__main__":
    sys.exit(main())
