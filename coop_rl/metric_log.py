"""What the trainer logs between two log steps, and how it is reduced to one number per metric.

Two kinds of metric: per-event ones (a rollout's cooperation rate, a step's time) are the mean of their events (the
maximum for names ending in ``_max``), over the steps since the last log and then over processes; the loss metrics
(``loss/entropy``, ``loss/is_weight``, ``loss/clip_fraction``, ``loss/kl``: each call's value a token mean,
:func:`coop_rl.loss.loss_metrics`) are means over every token of every loss call (micro-batches, seat adapters,
processes): a plain mean of the calls' means would count a one-token micro-batch as much as a thousand-token one.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["MetricLog", "over_processes", "reduce_metric", "token_means"]


def reduce_metric(key: str, values: list[float]) -> float:
    """A logged metric over micro-steps or processes: the maximum for ``*_max`` metrics, else the mean."""
    return max(values) if key.endswith("_max") else sum(values) / len(values)


def token_means(weighted: list[dict[str, list[float]]]) -> dict[str, float]:
    """sum(value x tokens) / sum(tokens) per key, over ``weighted``: one ``key -> [sum of value x tokens, tokens]``
    per process (:meth:`MetricLog.take`). A key with no token is left out."""
    totals: dict[str, list[float]] = {}
    for process in weighted:
        for key, (value_sum, tokens) in process.items():
            total = totals.setdefault(key, [0.0, 0.0])
            total[0] += value_sum
            total[1] += tokens
    return {key: value_sum / tokens for key, (value_sum, tokens) in totals.items() if tokens > 0}


def over_processes(gathered: list[tuple[dict[str, float], dict[str, list[float]]]]) -> dict[str, float]:
    """The logged metrics from every process's :meth:`MetricLog.take`: per-event means reduced again over the
    processes (:func:`reduce_metric`; a process that has no value of a key does not count), loss metrics pooled
    by tokens (:func:`token_means`)."""
    keys = sorted({key for means, _ in gathered for key in means})
    out = {key: reduce_metric(key, [means[key] for means, _ in gathered if key in means]) for key in keys}
    return out | token_means([weighted for _, weighted in gathered])


class MetricLog:
    """The metrics recorded since the last log step, on one process."""

    def __init__(self) -> None:
        self.events: dict[str, list[float]] = defaultdict(list)
        self.token_weighted: dict[str, list[float]] = {}  # key -> [sum of value x tokens, tokens]

    def add(self, key: str, value: float) -> None:
        """One event of a per-event metric."""
        self.events[key].append(value)

    def set(self, key: str, value: float) -> None:
        """A metric whose latest value is the one to log (a running count)."""
        self.events[key] = [value]

    def add_token_means(self, metrics: dict[str, float], tokens: float) -> None:
        """One loss call's token means over its ``tokens`` tokens."""
        for key, value in metrics.items():
            total = self.token_weighted.setdefault(key, [0.0, 0.0])
            total[0] += value * tokens
            total[1] += tokens

    def take(self) -> tuple[dict[str, float], dict[str, list[float]]]:
        """This process's per-event means and token-weighted sums, and an empty log for the next step."""
        means = {key: reduce_metric(key, values) for key, values in self.events.items() if values}
        weighted = self.token_weighted
        self.events, self.token_weighted = defaultdict(list), {}
        return means, weighted
