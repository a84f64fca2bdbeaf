"""Each app's network gets a subnet of lbsolo's pool that overlaps none of the engine's networks."""

from __future__ import annotations

import pytest

from lbsolo.engine import free_subnet


def test_the_first_free_subnet_of_the_pool_is_picked():
    assert free_subnet("10.213.0.0/16", 25, []) == "10.213.0.0/25"
    assert free_subnet("10.213.0.0/16", 25, ["10.213.0.0/25", "10.213.0.128/25"]) == "10.213.1.0/25"


def test_any_overlap_counts_whoever_made_the_network():
    # A network of someone else's covering the pool's start, and Docker's own bridges elsewhere.
    taken = ["172.17.0.0/16", "10.213.0.0/24", "10.213.1.64/26", "fd00::/64"]
    assert free_subnet("10.213.0.0/16", 25, taken) == "10.213.1.128/25"
    with pytest.raises(LookupError, match=r"no free /25 left in 10.213.0.0/16"):
        free_subnet("10.213.0.0/16", 25, ["10.0.0.0/8"])


def test_odd_entries_of_the_engine_are_skipped_and_a_bad_pool_is_named():
    assert free_subnet("10.213.0.0/24", 26, ["", "garbage"]) == "10.213.0.0/26"
    with pytest.raises(ValueError, match="LBSOLO_NETWORK_POOL"):
        free_subnet("10.213.0.0/24", 16, [])
    with pytest.raises(ValueError, match="LBSOLO_NETWORK_POOL"):
        free_subnet("not-a-cidr", 25, [])


def test_a_pool_runs_out_with_a_clear_message():
    pool = "10.213.0.0/24"
    taken: list[str] = []
    for _ in range(4):
        taken.append(free_subnet(pool, 26, taken))
    assert len(set(taken)) == 4
    with pytest.raises(LookupError, match="widen LBSOLO_NETWORK_POOL"):
        free_subnet(pool, 26, taken)
