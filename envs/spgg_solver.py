"""Subgame-perfect equilibrium of the one-shot sequential public goods stage game (MAC-SPGG), by backward induction.

Players 1..N choose, in this order, a contribution level q_i in {0, 1/K, ..., 1} of their endowment e; each sees
every predecessor's choice (perfect information), so backward induction over the game tree gives the
subgame-perfect equilibria. Two reward rules (docs/games.md):

- classic:     u_i = e*(1 - q_i) + (r/N) * e * sum_j q_j
- redesigned:  u_i = (rho/N)*e*sum_j q_j + gamma*e*q_i*m_i - kappa*e*q_i^2 - P*[ (1/N)*sum_j q_j < B ]
  with m_i the mean of the predecessors' q; the first mover has no predecessors and uses ``first_mover_mean``.

Why ``first_mover_mean`` defaults to 0: with m_1 = 1 and the default coefficients the first mover's marginal
payoff at q_1 = 1 is (rho/N)e + gamma*e - 2*kappa*e = 6 + 15 - 20 = +1 > 0 whatever the followers do, so the unique
SPNE is (1, 1, 1) with or without the penalty P and the threshold B: they never bind. With m_1 = 0 the first mover
gets no bonus; the SPNE is (0.6, 1, 1), and without the penalty (P = 0, or B = 0) it is (0.6, 0.9, 0.9): the
penalty is what lifts the followers from 0.9 to full contribution (mean 13/15 >= 0.85 instead of 0.8).

The utility functions here are the game's single source of truth: the game pays its rewards with them.
Everything is computed with :class:`fractions.Fraction` (floats enter through their decimal text, so 1.8 is
exactly 9/5): a tie between two levels is then a real tie, not a rounding accident, and "unique" means unique.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Rational

from coop_rl.envs.base import GameConfigError

Number = int | float | Fraction

REWARDS = ("redesigned", "classic")

#: the most (state, level) pairs the solver tries (exact fractions, about 5,000-15,000 a second on a 2-core Xeon:
#: players=3 levels=300 is 2.7e5 pairs and 50 s; players=8 levels=1000 would be 2.8e7, about an hour)
MAX_EXPANSIONS = 300_000

#: the game parameters the solver reads (the game has more: observation, mode, rounds, ...)
SOLVER_KEYS = (
    "players",
    "levels",
    "endowment",
    "r",
    "rho",
    "gamma",
    "kappa",
    "penalty",
    "threshold",
    "first_mover_mean",
    "reward",
)
#: the redesigned reward's parameters (the keys of :func:`redesigned_utility` after ``q`` and ``i``)
REDESIGNED_KEYS = ("endowment", "rho", "gamma", "kappa", "penalty", "threshold", "first_mover_mean")
#: the default predecessor mean of the first mover (see the module docstring)
FIRST_MOVER_MEAN = 0.0


def exact(x: Number) -> Fraction:
    """``x`` as an exact fraction; a float is read through its shortest decimal text (1.8 -> 9/5, not the binary
    neighbour 8106479329266893/4503599627370496), which is what the user typed."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):
        return Fraction(str(x))
    if isinstance(x, int | Rational):
        return Fraction(x)
    return Fraction(str(x))  # Decimal and other numeric types with an exact decimal text


def classic_utility(q: Sequence[Number], i: int, endowment: Number = 10, r: Number = 1.8) -> Fraction:
    """Classic linear public goods payoff of player ``i`` (0-based) for the contribution profile ``q``."""
    qs = [exact(x) for x in q]
    e, n = exact(endowment), len(qs)
    return e * (1 - qs[i]) + exact(r) / n * e * sum(qs)


def redesigned_utility(
    q: Sequence[Number],
    i: int,
    endowment: Number = 10,
    rho: Number = 1.8,
    gamma: Number = 1.5,
    kappa: Number = 1.0,
    penalty: Number = 15,
    threshold: Number = 0.85,
    first_mover_mean: Number = FIRST_MOVER_MEAN,
) -> Fraction:
    """MAC-SPGG redesigned payoff of player ``i`` (0-based): public share + predecessor-tied cooperation bonus
    - convex effort cost - collective penalty when the mean contribution is under the quality threshold.
    The bonus uses m_i, the mean of the predecessors' q, and ``first_mover_mean`` for the first mover."""
    qs = [exact(x) for x in q]
    e, n = exact(endowment), len(qs)
    total = sum(qs, Fraction(0))
    m_i = sum(qs[:i], Fraction(0)) / i if i > 0 else exact(first_mover_mean)
    below = total / n < exact(threshold)
    return (
        exact(rho) / n * e * total
        + exact(gamma) * e * qs[i] * m_i
        - exact(kappa) * e * qs[i] ** 2
        - (exact(penalty) if below else 0)
    )


def stage_utilities(q: Sequence[Number], reward: str = "redesigned", **params: Number) -> list[Fraction]:
    """Every player's payoff for the profile ``q`` under ``reward``; ``params`` are the formula's parameters
    (endowment, r for classic; endowment, rho, gamma, kappa, penalty, threshold, first_mover_mean for
    redesigned)."""
    if reward == "classic":
        keys = ("endowment", "r")
        return [classic_utility(q, i, **{k: params[k] for k in keys if k in params}) for i in range(len(q))]
    if reward == "redesigned":
        return [
            redesigned_utility(q, i, **{k: params[k] for k in REDESIGNED_KEYS if k in params}) for i in range(len(q))
        ]
    raise GameConfigError(f"reward={reward!r}: expected one of {', '.join(REWARDS)}")


@dataclass
class SPNEResult:
    """What backward induction finds for the stage game.

    Two notions of uniqueness are reported because they differ here: with exact arithmetic many off-path
    nodes of the redesigned game have two equally good levels (the last mover's concave payoff peaks exactly
    half-way between two levels, for instance), so the equilibrium *strategy profile* is not unique (``strict``
    is False), yet every such tie leads to the same on-path play, so the equilibrium *outcome* is (``unique``).
    """

    spne: list[float]  # on-path contributions q_1..q_N (fractions of the endowment); ties broken to the lowest level
    unique: bool  # every subgame-perfect equilibrium has this same on-path play (a unique SPNE outcome)
    payoffs: list[float]  # on-path utilities u_1..u_N
    strict: bool = True  # every decision node of the whole tree, on and off path, has exactly one best response
    tie_nodes: int = 0  # decision nodes of the whole tree with several best responses
    outcomes: int = 1  # number of distinct on-path plays over all subgame-perfect equilibria

    def to_dict(self) -> dict:
        return {
            "spne": self.spne,
            "unique": self.unique,
            "payoffs": self.payoffs,
            "strict": self.strict,
            "tie_nodes": self.tie_nodes,
            "outcomes": self.outcomes,
        }

    def table(self, params: dict) -> str:
        """``coop-rl solve``'s plain text: the game's reward, N and K, a line per position, whether it is unique."""
        task = params.get("mode") == "task"  # q is an answer's correctness: two levels, whatever `levels` says
        levels = "K=1, task mode: q is 0 or 1" if task else f"K={params['levels']}"
        lines = [f"spgg ({params['reward']} reward, N={params['players']}, {levels})"]
        if params.get("rounds", 1) > 1:
            lines[0] += f"; the stage game: each of the {params['rounds']} rounds is one"
        lines.append("position  contribution  payoff")
        for i, (q, u) in enumerate(zip(self.spne, self.payoffs, strict=True)):
            lines.append(f"{i + 1:<8}  {q:<12.2f}  {u:.3f}")
        lines.append(f"unique: {str(self.unique).lower()}")
        return "\n".join(lines)


def solve_spgg(
    players: int = 3,
    levels: int = 10,
    endowment: Number = 10,
    r: Number = 1.8,
    rho: Number = 1.8,
    gamma: Number = 1.5,
    kappa: Number = 1.0,
    penalty: Number = 15,
    threshold: Number = 0.85,
    reward: str = "redesigned",
    first_mover_mean: Number = FIRST_MOVER_MEAN,
) -> SPNEResult:
    """Backward induction over the stage game tree with ``players`` movers and ``levels`` + 1 levels each.

    ``spne`` is the path of the equilibrium that breaks every tie towards the lowest contribution; ``outcomes``
    counts the on-path plays of all subgame-perfect equilibria (whatever the tie-breaking), ``unique`` says
    there is only one, ``strict`` that no node anywhere in the tree has a tie.
    """
    if reward not in REWARDS:
        raise GameConfigError(f"reward={reward!r}: expected one of {', '.join(REWARDS)}")
    if int(players) < 1 or int(levels) < 1:
        raise GameConfigError("the solver needs players >= 1 and levels >= 1")
    n, k_max = int(players), int(levels)
    expansions = sum((i * k_max + 1) * (k_max + 1) for i in range(n))  # (state, level) pairs of the memoised tree
    if expansions > MAX_EXPANSIONS:
        raise GameConfigError(
            f"players={n}, levels={k_max}: the exact solver would try {expansions:.2g} (state, level) pairs, over its "
            f"limit of {MAX_EXPANSIONS:.0e} (about a minute); use fewer levels or players"
        )
    if reward == "classic":
        util = _utility(classic_utility, endowment=endowment, r=r)
    else:
        coefficients = dict(rho=rho, gamma=gamma, kappa=kappa, penalty=penalty, threshold=threshold)
        util = _utility(redesigned_utility, endowment=endowment, first_mover_mean=first_mover_mean, **coefficients)
    grid = [Fraction(k, k_max) for k in range(k_max + 1)]
    path, root, tie_states = _backward_induction(n, grid, util)
    ways = _prefix_counts(n, k_max)  # a tied state counts once per prefix that reaches it
    q = [grid[x] for x in path]
    outcomes = sum(count for _, count in root.values())
    return SPNEResult(
        spne=[float(x) for x in q],
        unique=outcomes == 1,
        payoffs=[float(util(q, i)) for i in range(n)],
        strict=not tie_states,
        tie_nodes=sum(ways[i][s] for i, s in tie_states),
        outcomes=outcomes,
    )


Utility = Callable[[list[Fraction], int], Fraction]
#: the SPNE continuations of a subgame by their level sum: {sum: (a representative continuation, how many)}
Entries = dict[int, tuple[tuple[int, ...], int]]


def _utility(formula: Callable[..., Fraction], **params: Number) -> Utility:
    """``formula(q, i, **params)`` with every parameter made exact once."""
    exact_params = {key: exact(value) for key, value in params.items()}
    return lambda q, i: formula(q, i, **exact_params)


def _backward_induction(
    n: int, grid: list[Fraction], util: Utility
) -> tuple[tuple[int, ...], Entries, list[tuple[int, int]]]:
    """The lowest-tie-break equilibrium path (levels 0..K), the root's SPNE continuations, and the tied states
    (position, prefix level sum) of the whole tree.

    Both utilities depend on the predecessors only through their sum (the total and the mean m_i), so two
    prefixes of equal length and equal sum root identical subgames: memoising on (position, prefix sum)
    instead of on the whole prefix is exact and keeps the tree polynomial (N=8 would otherwise be 11^7 nodes).
    The full tree is still covered: every reachable (position, sum) is expanded with all its K+1 choices.

    Each state keeps (a) the continuation under lowest-level tie-breaking and (b) the set of continuations of
    *every* SPNE of its subgame, summarised by their level sum (:data:`Entries`): every earlier player's utility
    depends on the continuation only through that sum, so that carries all a predecessor needs while staying at
    most N*K+1 entries long.
    """
    k_max = len(grid) - 1
    memo: dict[tuple[int, int], tuple[tuple[int, ...], Entries]] = {}
    tie_states: list[tuple[int, int]] = []

    def solve(prefix: tuple[int, ...]) -> tuple[tuple[int, ...], Entries]:
        """Equilibrium levels (integers 0..K) of players len(prefix)..N-1 after ``prefix``."""
        key = (len(prefix), sum(prefix))
        if key in memo:
            return memo[key]
        i = len(prefix)
        lowest_value: list[Fraction] = []  # each level's value under the lowest-tie-break continuation
        lowest_path: list[tuple[int, ...]] = []
        worst: list[Fraction] = []  # each level's worst value over its subgame's SPNE continuations
        candidates: list[tuple[int, tuple[int, ...], int, Fraction]] = []  # (level, continuation, count, value)
        for k in range(k_max + 1):
            head = prefix + (k,)
            low, entries = solve(head) if i + 1 < n else ((), {0: ((), 1)})
            lowest_path.append((k,) + low)
            lowest_value.append(util([grid[x] for x in head + low], i))
            values = [(c, count, util([grid[x] for x in head + c], i)) for c, count in entries.values()]
            worst.append(min(v for _, _, v in values))
            candidates += [(k, c, count, v) for c, count, v in values]
        best = max(lowest_value)
        if lowest_value.count(best) > 1:
            tie_states.append(key)
        chosen = lowest_path[lowest_value.index(best)]  # first maximiser = lowest contribution
        memo[key] = (chosen, _spne_plays(candidates, worst))
        return memo[key]

    path, root = solve(())
    return path, root, tie_states


def _spne_plays(candidates: list[tuple[int, tuple[int, ...], int, Fraction]], worst: list[Fraction]) -> Entries:
    """The plays (level k, then continuation c) of a state that some SPNE makes, merged by their level sum.

    Level k followed by continuation c is an SPNE play iff some choice of SPNE in the other subgames makes k a
    best response; the most punishing choice gives each other level k' its worst value, hence the test.
    """
    best_other = [max((w for j, w in enumerate(worst) if j != k), default=None) for k in range(len(worst))]
    merged: Entries = {}
    for k, c, count, v in candidates:
        if best_other[k] is None or v >= best_other[k]:
            total = k + sum(c)
            previous = merged.get(total)
            merged[total] = ((k,) + c, count) if previous is None else (previous[0], previous[1] + count)
    return merged


def _prefix_counts(n: int, k_max: int) -> list[list[int]]:
    """``ways[i][s]``: how many prefixes of length i (levels 0..K each) have level sum s."""
    ways = [[1]]
    for _ in range(n):
        row = [0] * (len(ways[-1]) + k_max)
        for s, count in enumerate(ways[-1]):
            for k in range(k_max + 1):
                row[s + k] += count
        ways.append(row)
    return ways


def solve_params(params: dict) -> SPNEResult:
    """Solve for a game's parameter dict (e.g. ``SequentialPublicGoods(...).params``), ignoring the keys the
    stage game does not use. In task mode a player's q is its answer's correctness, 0 or 1, so the stage game is
    solved with two levels (``levels=1``) whatever ``levels`` says."""
    solver_params = {key: params[key] for key in SOLVER_KEYS if key in params}
    if params.get("mode") == "task":
        solver_params["levels"] = 1
    return solve_spgg(**solver_params)
