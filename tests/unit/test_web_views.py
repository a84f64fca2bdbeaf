"""The web UI's pure view helpers: natural sorting of app names."""

from __future__ import annotations

import random

from lbsolo.api.web_views import natural_key


def test_names_sort_as_people_read_them():
    names = ["s10", "s2", "s1", "api", "s2-worker", "s100", "web3", "web20", "2fa", "Api-2"]
    want = ["api", "Api-2", "s1", "s2", "s2-worker", "s10", "s100", "web3", "web20", "2fa"]
    assert sorted(names, key=natural_key) == want


def test_two_hundred_apps_sort_by_their_numbers():
    names = [f"shop-{i}" for i in range(1, 201)]
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=natural_key) == names


def test_leading_zeros_and_equal_numbers_still_sort_deterministically():
    assert sorted(["a01", "a1", "a001"], key=natural_key) == sorted(["a001", "a01", "a1"], key=natural_key)
    assert natural_key("a01") != natural_key("a1")
    assert sorted(["b", "a", "c"], key=natural_key) == ["a", "b", "c"]
