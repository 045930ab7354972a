"""detector.core.distributed: the split rule, torchrun's variables, a rank's device and cores."""

from __future__ import annotations

import pytest

from detector.core.distributed import Shard, World


def test_shares_are_strided_disjoint_and_cover_the_list():
    items = list(range(10))
    shares = [Shard(i, 3).take(items) for i in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(shares, [])) == items
    assert Shard().take(items) == items and Shard().whole


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0", "1/2/3"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ValueError):
        Shard.parse(text)


def test_the_world_of_torchrun_and_of_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World() and not World().distributed
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    world = World.from_env()
    assert (world.rank, world.size, world.local_rank, world.local_size) == (5, 8, 1, 4)
    assert world.shard == Shard(5, 8) and not world.is_main
    assert world.device("cuda:0") == "cuda:1" and world.device("cpu") == "cpu"
    assert world.cores(16) == 4 and world.cores(2) == 1  # at least one core each
