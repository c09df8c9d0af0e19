"""The toy study's data: a branch token, then bits that follow the branch's pattern.

Sequences are ``<bos> <branch> b1 … bn``. A branch either repeats a fixed bit pattern (``110`` →
``110110``) or flips a biased coin per bit (``pattern: random``). Decoding is unconstrained: a sampled
sequence whose first token is not a branch, or whose later tokens are not bits, is *malformed* and earns
``invalid_reward``. The whole well-formed sequence space (branches × 2^n bit strings) is small enough to
enumerate, which is what makes the exact KL-regularised optimum computable.

    python run.py experiment=toy_kl task.branches.A.pattern=10 task.reward=same
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from rlcircuits.models.tokenizer import SPECIAL, build_word_tokenizer
from rlcircuits.registry import check
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.base import Example, Task
from rlcircuits.tasks.bit_rewards import REWARDS

MALFORMED = "malformed"


@dataclass
class BranchConfig:
    prob: float = 0.0  # probability of this branch in the data
    pattern: str = "random"  # a bit string repeated to n_bits, or "random"
    p_one: float = 0.5  # P(bit = 1) when pattern is random


@dataclass
class ToyABCConfig:
    name: str = "toy_abc"
    branches: dict[str, BranchConfig] = field(default_factory=dict)  # name (= its token) → branch
    n_bits: int = 6  # bits after the branch token
    reward: str = "ones"  # a name from rlcircuits.tasks.bit_rewards.REWARDS
    invalid_reward: float = 0.0  # reward of a malformed sequence

    def __post_init__(self):
        check(len(self.branches) >= 1, "branches", "needs at least one branch")
        total = sum(b.prob for b in self.branches.values())
        probs = ", ".join(f"{name} {b.prob:g}" for name, b in self.branches.items())
        check(abs(total - 1) < 1e-6, "branches", f"probabilities sum to {total:g}, not 1 ({probs}): set every "
              "branch's task.branches.<name>.prob so that they do")
        reserved = {"0", "1", MALFORMED, *SPECIAL.values()}
        for name, b in self.branches.items():
            key = f"branches.{name}"
            check(name not in reserved and name.strip() == name and " " not in name, key,
                  f"a branch name is its token; it may not be one of {sorted(reserved)} or hold spaces")
            check(0 <= b.prob <= 1, f"{key}.prob", f"{b.prob} is not a probability")
            check(b.pattern == "random" or (b.pattern != "" and set(b.pattern) <= {"0", "1"}),
                  f"{key}.pattern", f"{b.pattern!r} must be a string of 0s and 1s, or 'random'")
            check(0 <= b.p_one <= 1, f"{key}.p_one", f"{b.p_one} is not a probability")
        check(1 <= self.n_bits <= 16, "n_bits", f"{self.n_bits} must be in 1..16 (the space is enumerated)")
        check(self.reward in REWARDS, "reward", f"unknown reward {self.reward!r}; valid: {', '.join(REWARDS)}")


@TASKS.register("toy_abc", schema=ToyABCConfig)
class ToyABC(Task):
    splits = ("train",)

    def __init__(self, cfg: ToyABCConfig):
        self.cfg = cfg
        self.branches = list(cfg.branches)
        self.tokenizer = build_word_tokenizer([*self.branches, "0", "1"])
        self.max_new_tokens = 1 + cfg.n_bits
        self.max_length = 2 + cfg.n_bits
        self.reward_fn = REWARDS.get(cfg.reward).fn
        self._id = self.tokenizer.convert_tokens_to_ids
        self._bos = self.tokenizer.bos_token_id
        ids, _, rewards = self.well_formed()
        self._reward_of = dict(zip(map(tuple, ids[:, 1:].tolist()), rewards))  # completion ids → reward

    # ---- data -------------------------------------------------------------------------------------
    def bits_distribution(self, branch: str) -> dict[str, float]:
        """The data's distribution of bit strings after ``branch``: ``{bits: probability}``."""
        b, n = self.cfg.branches[branch], self.cfg.n_bits
        if b.pattern != "random":
            return {(b.pattern * n)[:n]: 1.0}
        return {
            "".join(bits): b.p_one ** bits.count("1") * (1 - b.p_one) ** bits.count("0")
            for bits in itertools.product("01", repeat=n)
        }

    def encode(self, branch: str, bits: str) -> list[int]:
        """Completion ids of a well-formed sequence (without ``<bos>``)."""
        return [self._id(branch), *(self._id(c) for c in bits)]

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """``n`` sequences from the data distribution (vectorised: SFT draws a fresh batch every step)."""
        rng = np.random.default_rng(seed)
        probs = np.array([self.cfg.branches[b].prob for b in self.branches])
        which = rng.choice(len(self.branches), size=n, p=probs / probs.sum())  # [n]
        coins = rng.random((n, self.cfg.n_bits))  # [n, n_bits]
        zero, one = self._id("0"), self._id("1")
        rows = np.empty((n, 1 + self.cfg.n_bits), dtype=np.int64)
        rows[:, 0] = np.array([self._id(b) for b in self.branches])[which]
        for i, name in enumerate(self.branches):
            b, mask = self.cfg.branches[name], which == i
            if b.pattern == "random":
                bits = coins[mask] < b.p_one
            else:
                bits = np.array([c == "1" for c in (b.pattern * self.cfg.n_bits)[: self.cfg.n_bits]])
            rows[mask, 1:] = np.where(bits, one, zero)
        return [Example([self._bos], row, {"branch": self.branches[i]}) for row, i in zip(rows.tolist(), which)]

    def well_formed_bits(self) -> list[str]:
        """The bit strings of the well-formed sequences, in the order of ``well_formed``."""
        return ["".join(bits) for _ in self.branches for bits in itertools.product("01", repeat=self.cfg.n_bits)]

    def well_formed(self) -> tuple[torch.Tensor, list[str], list[float]]:
        """Every well-formed sequence: ids ``[N, 2 + n_bits]`` (with ``<bos>``), branch names, rewards.

        N = n_branches · 2^n_bits, branch by branch.
        """
        n = 2**self.cfg.n_bits
        branches = [b for b in self.branches for _ in range(n)]
        bits = self.well_formed_bits()
        ids = [[self._bos, *self.encode(b, s)] for b, s in zip(branches, bits)]
        return torch.tensor(ids), branches, [self.reward_fn(s) for s in bits]

    # ---- reading samples --------------------------------------------------------------------------
    def parse(self, completion: list[int]) -> tuple[str, str | None]:
        """(branch, bits) of a completion, or ``("malformed", None)``."""
        toks = self.tokenizer.convert_ids_to_tokens(completion)
        if len(toks) != self.max_new_tokens or toks[0] not in self.cfg.branches:
            return MALFORMED, None
        bits = "".join(toks[1:])
        if set(bits) - {"0", "1"} or len(bits) != self.cfg.n_bits:
            return MALFORMED, None
        return toks[0], bits

    def rewards(self, examples: list[Example], completions: list[list[int]]) -> list[float]:
        """Reward of each completion: a table look-up, since the well-formed space is enumerated anyway."""
        return [self._reward_of.get(tuple(c), self.cfg.invalid_reward) for c in completions]
