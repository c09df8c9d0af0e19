"""The toy task: config checks, the data it generates, and how it reads samples."""

from collections import Counter

import pytest
from conftest import TOY_BRANCHES

from rlcircuits.registry import ConfigError, validate
from rlcircuits.tasks.toy_abc import MALFORMED, ToyABCConfig


@pytest.mark.parametrize("over,key", [
    ({"branches": {"A": {"prob": 0.5, "pattern": "110"}}}, "task.branches"),
    ({"branches": {"A": {"prob": 1.0, "pattern": "120"}}}, "task.branches.A.pattern"),
    ({"branches": {"A": {"prob": 1.0, "pattern": "random", "p_one": 1.5}}}, "task.branches.A.p_one"),
    ({"branches": {"0": {"prob": 1.0, "pattern": "1"}}}, "task.branches.0"),
    ({"n_bits": 0}, "task.n_bits"),
    ({"reward": "nope"}, "task.reward"),
    ({"n_bitz": 3}, "task.n_bitz"),
])
def test_bad_config_names_the_key(over, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        validate(ToyABCConfig, {"branches": TOY_BRANCHES} | over, "task")


def test_probabilities_error_shows_every_branch():
    branches = {**TOY_BRANCHES, "A": {"prob": 0.5, "pattern": "10"}}  # python run.py task.branches.A.prob=0.5
    with pytest.raises(ConfigError, match=r"sum to 1.16667, not 1 \(A 0.5, B 0.333333, C 0.333333\)"):
        validate(ToyABCConfig, {"branches": branches}, "task")


def test_examples_follow_the_branches(make_toy):
    task = make_toy()
    examples = task.examples("train", 6000, seed=0)
    counts = Counter(e.meta["branch"] for e in examples)
    assert all(abs(counts[b] / 6000 - 1 / 3) < 0.03 for b in "ABC")
    c_bits = []
    for e in examples:
        branch, bits = task.parse(e.completion)
        assert branch == e.meta["branch"] and e.prompt == [task.tokenizer.bos_token_id]
        if branch == "A":
            assert bits == "110110"
        elif branch == "B":
            assert bits == "001001"
        else:
            c_bits.append(bits)
    ones = sum(b.count("1") for b in c_bits) / (6 * len(c_bits))
    assert abs(ones - 0.5) < 0.02
    assert len(set(c_bits)) > 40  # random, not a pattern
    assert task.examples("train", 50, seed=3) == task.examples("train", 50, seed=3)


def test_custom_branches_from_overrides(make_toy):
    task = make_toy(branches={"X": {"prob": 0.25, "pattern": "10"}, "Y": {"prob": 0.75, "pattern": "random", "p_one": 0.9}},
                n_bits=5)
    assert task.bits_distribution("X") == {"10101": 1.0}
    dist = task.bits_distribution("Y")
    assert len(dist) == 32 and abs(sum(dist.values()) - 1) < 1e-12
    assert dist["11111"] == pytest.approx(0.9**5)


def test_parse_and_rewards_of_malformed_samples(make_toy):
    task = make_toy(invalid_reward=-1.0)
    tok = task.tokenizer.convert_tokens_to_ids
    good = [tok("A"), *map(tok, "110110")]
    bit_first = [tok("1"), *map(tok, "110110")]
    branch_in_bits = [tok("C"), tok("1"), tok("B"), *map(tok, "1111")]
    short = [tok("C"), tok("1")]
    assert task.parse(good) == ("A", "110110")
    for bad in (bit_first, branch_in_bits, short):
        assert task.parse(bad) == (MALFORMED, None)
    assert task.rewards([], [good, bit_first, branch_in_bits]) == [4.0, -1.0, -1.0]


def test_well_formed_space(make_toy):
    task = make_toy(n_bits=4)
    ids, branches, rewards = task.well_formed()
    assert ids.shape == (3 * 16, 6)
    assert Counter(branches) == {"A": 16, "B": 16, "C": 16}
    assert len({tuple(r) for r in ids.tolist()}) == 48
    assert [task.parse(r[1:])[0] for r in ids.tolist()] == branches
    assert rewards == [task.reward_fn(task.parse(r[1:])[1]) for r in ids.tolist()]
