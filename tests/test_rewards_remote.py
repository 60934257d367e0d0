"""A reward in a shared Ray actor scores exactly like the local one (one short local Ray session)."""

from __future__ import annotations

import pytest

from rewards import RewardRunner, get_reward

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    # address="local": a new private instance, never another test's running cluster.
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_remote_reward_proxy_matches_local_and_is_shared(local_ray):
    from rewards.remote import RemoteReward, remote_reward

    completions = ["<think>one two</think>a", "<think>" + "w " * 10 + "</think>a", ""]
    proxy = remote_reward("think_length", {"max_words": 5}, num_cpus=0)
    assert isinstance(proxy, RemoteReward)
    local = get_reward("think_length", max_words=5)
    assert proxy(None, completions) == local(None, completions) == [1.0, 0.0, 0.0]
    again = remote_reward("think_length", {"max_words": 5}, num_cpus=0)
    assert again.actor._actor_id == proxy.actor._actor_id  # same spec: same actor
    # From recipe entries, through the runner.
    runner = RewardRunner(
        [
            {"name": "think_length", "max_words": 5, "remote": {"num_cpus": 0}},
            {"name": "think_format", "remote": True, "alias": "fmt"},
        ]
    )
    result = runner(None, completions)
    assert result.per_reward["think_length"] == [1.0, 0.0, 0.0]
    assert result.per_reward["fmt"] == [1.0, 1.0, 0.0]
