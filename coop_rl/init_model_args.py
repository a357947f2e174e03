"""``coop-rl init-model``'s arguments, checked before any build (a build takes minutes): the kind, the output folder,
the options the kind reads (one it would ignore is refused), the seed and data scale, and ``--population``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from coop_rl.errors import UsageError


def parse_populations(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``--population GAME=S1,S2`` (repeatable) as {game: (strategies)}; names are checked by the builder."""
    populations: dict[str, tuple[str, ...]] = {}
    for value in values:
        game, sep, names = value.partition("=")
        strategies = tuple(name.strip() for name in names.split(",") if name.strip())
        if not sep or not game.strip() or not strategies:
            raise UsageError(f"--population takes GAME=STRATEGY,STRATEGY,..., got {value!r}")
        populations[game.strip()] = strategies
    return populations


MAX_INIT_SEED = 2**31 - 1  # numpy's bound is 2**32 - 1; the builders seed phases and tokenizers from seed + k


def check_init_model(
    args: argparse.Namespace,
    populations: dict,
    pretrained: Sequence[str],
    tiny_games: Sequence[str],
    random_kinds: Sequence[str],
) -> tuple[str, ...]:
    """The games of ``--games`` (() when not given), after refusing what the kind asked for would ignore."""
    from coop_rl.atomic_files import check_out_dir

    if args.kind not in ("tiny", *pretrained, *random_kinds):
        raise UsageError(f"unknown model kind {args.kind!r}; known: {', '.join(['tiny', *pretrained, *random_kinds])}")
    check_out_dir(args.out)  # a folder path, under a writable folder: before minutes of building
    refuse_ignored_options(args, populations, pretrained)
    games = tuple(g.strip() for g in args.games.split(",")) if args.games is not None else ()
    if args.games is not None and not all(games):
        raise UsageError(f"--games takes comma-separated game names, got {args.games!r}")
    if args.seed is not None and not 0 <= args.seed <= MAX_INIT_SEED:  # the builders add a phase to it for numpy
        raise UsageError(f"--seed must be in [0, {MAX_INIT_SEED}], got {args.seed}")
    if args.data_scale is not None and not 0 < args.data_scale <= 100:  # also refuses nan and inf
        raise UsageError(f"--data-scale must be in (0, 100], got {args.data_scale}")
    from coop_rl.warm_start import POPULATIONS  # a game without one is refused by the builder, naming them

    unbuilt = sorted(set(populations) & set(POPULATIONS) - set(games or tiny_games))
    if unbuilt:
        raise UsageError(f"--population names {', '.join(unbuilt)}, which the warm start does not imitate: add --games")
    return games


def refuse_ignored_options(args: argparse.Namespace, populations: dict, pretrained: Sequence[str]) -> None:
    """Refuse, in one line, an option the kind would ignore. The options default to None or False (cli_parser), so
    only a given one counts: tiny reads --seed, --data-scale, --games, --population and --precision; a pretrained
    kind --precision, --unconstrained and --warm-start, and with --warm-start --seed, --data-scale and --games; a
    random-* kind --seed only (random weights saved in bfloat16, no warm start, no answer marking)."""
    pre = ", ".join(pretrained)
    applies = {  # option: (given, the kinds that read it)
        "--seed": (args.seed is not None, f"tiny, random-* and {pre} --warm-start"),
        "--data-scale": (args.data_scale is not None, f"tiny and {pre} --warm-start"),
        "--games": (args.games is not None, f"tiny and {pre} --warm-start"),
        "--population": (bool(populations), "init-model tiny only"),
        "--precision": (args.precision is not None, f"tiny and {pre}"),
        "--unconstrained": (args.unconstrained, pre),
        "--warm-start": (args.warm_start, pre),
    }
    if args.kind == "tiny":
        read = {"--seed", "--data-scale", "--games", "--population", "--precision"}
    elif args.kind in pretrained:
        read = {"--precision", "--unconstrained", "--warm-start"}
        read |= {"--seed", "--data-scale", "--games"} if args.warm_start else set()
    else:  # random-*
        read = {"--seed"}
    for option, (given, kinds) in applies.items():
        if given and option not in read:
            without = " without --warm-start" if args.kind in pretrained and kinds.endswith("--warm-start") else ""
            note = " (it is always warm-started)" if (option, args.kind) == ("--warm-start", "tiny") else ""
            raise UsageError(f"{option} applies to {kinds}; init-model {args.kind}{without} would ignore it{note}")


__all__ = ["MAX_INIT_SEED", "check_init_model", "parse_populations", "refuse_ignored_options"]
