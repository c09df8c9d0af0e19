"""Each reward in the toy study's family, on hand-worked bit strings."""

import pytest

from rlcircuits.tasks.bit_rewards import ADDITIVE, REWARDS

CASES = {
    "ones": [("110110", 4), ("000000", 0), ("1", 1)],
    "zeros": [("110110", 2), ("000000", 6)],
    "same": [("110110", 2), ("000000", 5), ("010101", 0)],
    "alternate": [("110110", 3), ("010101", 5), ("111111", 0)],
    "palindrome": [("110011", 3), ("110110", 1), ("100000", 2), ("10101", 2)],
    "ascending": [("010101", 3), ("000111", 1), ("111000", 0)],
    "descending": [("010101", 2), ("000111", 0), ("111000", 1)],
    "unique": [("000000", 1), ("000111", 4), ("0001011100", 8), ("11", 0)],
    "even": [("110110", 1), ("100000", 0), ("000000", 1)],
    "odd": [("110110", 0), ("100000", 1)],
    "runs": [("110110", 2), ("000111", 3), ("010101", 1), ("111111", 6)],
    "boundary_match": [("110110", 0), ("100001", 1), ("011110", 1)],
}


def test_every_reward_is_tested_and_documented():
    assert set(CASES) == set(REWARDS)
    for name, entry in REWARDS.items():
        assert entry.fn.__doc__, f"{name} has no one-line description"


@pytest.mark.parametrize("name,bits,expected", [(n, b, e) for n, cs in CASES.items() for b, e in cs])
def test_reward_values(name, bits, expected):
    assert REWARDS.get(name).fn(bits) == expected


@pytest.mark.parametrize("name", sorted(ADDITIVE))
def test_additive_rewards_are_sums_of_their_per_bit_terms(name):
    import itertools

    for bits in map("".join, itertools.product("01", repeat=5)):
        assert REWARDS.get(name).fn(bits) == sum(ADDITIVE[name][b] for b in bits)


def test_unknown_reward_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*ones"):
        REWARDS.get("nope")
