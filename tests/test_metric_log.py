"""coop_rl/metric_log.py: per-event metrics are means of their events; the loss metrics are means over tokens."""

import math

from coop_rl.metric_log import MetricLog, over_processes, reduce_metric, token_means


def test_per_event_metrics_are_means_and_max_metrics_maxima():
    assert reduce_metric("rollout/cooperation_rate", [0.5, 1.0, 0.0]) == 0.5
    assert reduce_metric("rollout/sampler_logprob_gap_max", [0.5, 2.0, 0.0]) == 2.0
    log = MetricLog()
    log.add("time/rollout_s", 1.0)
    log.add("time/rollout_s", 3.0)
    log.set("fault/skipped_steps", 1.0)
    log.set("fault/skipped_steps", 2.0)  # a running count: the latest value
    means, weighted = log.take()
    assert means == {"time/rollout_s": 2.0, "fault/skipped_steps": 2.0} and weighted == {}
    assert log.take() == ({}, {})  # taken: the next log step starts empty


def test_loss_metrics_average_every_token_of_every_call():
    # a micro-batch of one token with k3 = e - 2 and one of three tokens with k3 = 0: the mean over the four tokens
    # is (e - 2) / 4, where the mean of the two calls' means was (e - 2) / 2
    log = MetricLog()
    log.add_token_means({"loss/kl": math.e - 2, "loss/clip_fraction": 1.0}, tokens=1.0)
    log.add_token_means({"loss/kl": 0.0, "loss/clip_fraction": 0.0}, tokens=3.0)
    means, weighted = log.take()
    assert means == {}
    assert token_means([weighted]) == {"loss/kl": (math.e - 2) / 4, "loss/clip_fraction": 0.25}
    # over processes alike: a second process's 4 tokens with k3 1 and no clip
    other = {"loss/kl": [4.0, 4.0], "loss/clip_fraction": [0.0, 4.0]}
    assert token_means([weighted, other]) == {"loss/kl": (math.e - 2 + 4) / 8, "loss/clip_fraction": 1 / 8}
    assert token_means([{"loss/kl": [0.0, 0.0]}]) == {}  # no token: nothing to log


def test_over_processes_means_events_and_pools_tokens():
    first = ({"rollout/cooperation_rate": 0.5, "rollout/sampler_logprob_gap_max": 0.1}, {"loss/kl": [1.0, 1.0]})
    second = ({"rollout/cooperation_rate": 1.0, "rollout/sampler_logprob_gap_max": 0.3, "eval/x": 2.0},
              {"loss/kl": [0.0, 3.0]})  # fmt: skip
    assert over_processes([first, second]) == {
        "rollout/cooperation_rate": 0.75,
        "rollout/sampler_logprob_gap_max": 0.3,  # the worst process
        "eval/x": 2.0,  # only the process that has it
        "loss/kl": 0.25,  # 1 over 4 tokens, not the mean of 1.0 and 0.0
    }
    assert over_processes([({"time/rollout_s": 2.0}, {})]) == {"time/rollout_s": 2.0}
