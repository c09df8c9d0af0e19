"""Rewards on a bit string (``str`` of '0'/'1'), by name: the toy study's family.

Each is a plain ``(bits: str) -> float``. They are deliberately simple and deterministic, so the
KL-regularised optimum under any of them can be computed exactly by enumeration (see
``rlcircuits.analysis.kl_optimum``). ``additive`` marks rewards that are a sum of per-position terms, for
which the perfect-base optimum also has a product closed form.

    >>> REWARDS.get("ones").fn("110110")
    4.0
"""

from __future__ import annotations

from rlcircuits.registry import Registry

REWARDS = Registry("reward")


def _pairs(bits: str):
    return zip(bits, bits[1:])


@REWARDS.register("ones")
def ones(bits: str) -> float:
    """Number of 1s (additive)."""
    return float(bits.count("1"))


@REWARDS.register("zeros")
def zeros(bits: str) -> float:
    """Number of 0s (additive)."""
    return float(bits.count("0"))


@REWARDS.register("same")
def same(bits: str) -> float:
    """Number of adjacent pairs that are equal."""
    return float(sum(a == b for a, b in _pairs(bits)))


@REWARDS.register("alternate")
def alternate(bits: str) -> float:
    """Number of adjacent pairs that differ."""
    return float(sum(a != b for a, b in _pairs(bits)))


@REWARDS.register("palindrome")
def palindrome(bits: str) -> float:
    """Number of mirrored positions (i, n-1-i), i < n/2, that hold the same bit."""
    return float(sum(bits[i] == bits[-1 - i] for i in range(len(bits) // 2)))


@REWARDS.register("ascending")
def ascending(bits: str) -> float:
    """Number of 0→1 steps between adjacent bits."""
    return float(sum(a < b for a, b in _pairs(bits)))


@REWARDS.register("descending")
def descending(bits: str) -> float:
    """Number of 1→0 steps between adjacent bits."""
    return float(sum(a > b for a, b in _pairs(bits)))


@REWARDS.register("unique")
def unique(bits: str) -> float:
    """Number of distinct 3-bit windows."""
    return float(len({bits[i : i + 3] for i in range(len(bits) - 2)}))


@REWARDS.register("even")
def even(bits: str) -> float:
    """1 if the number of 1s is even, else 0."""
    return float(bits.count("1") % 2 == 0)


@REWARDS.register("odd")
def odd(bits: str) -> float:
    """1 if the number of 1s is odd, else 0."""
    return float(bits.count("1") % 2 == 1)


@REWARDS.register("runs")
def runs(bits: str) -> float:
    """Length of the longest run of equal bits."""
    best = cur = 1 if bits else 0
    for a, b in _pairs(bits):
        cur = cur + 1 if a == b else 1
        best = max(best, cur)
    return float(best)


@REWARDS.register("boundary_match")
def boundary_match(bits: str) -> float:
    """1 if the first bit equals the last, else 0."""
    return float(bool(bits) and bits[0] == bits[-1])


ADDITIVE = {"ones": {"0": 0.0, "1": 1.0}, "zeros": {"0": 1.0, "1": 0.0}}
"""Per-position reward of each bit, for the rewards that are a sum over positions."""
