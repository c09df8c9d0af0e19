"""What every task provides: examples per split, a tokenizer, and a reward.

A task owns its data generation, formatting, tokenizer vocabulary, reward, eval splits and probe labels.
Trainers and analyses see only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerFast


@dataclass
class Example:
    """One task instance as token ids.

    prompt: what the model is conditioned on (starts with ``<bos>``).
    completion: the target continuation for SFT (ends with ``<eos>`` where the task has one).
    meta: task labels (answer, rule, branch, ...) used by rewards, evaluation and probes.
    """

    prompt: list[int]
    completion: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class. Subclasses set ``tokenizer``, ``splits`` and ``max_new_tokens`` and implement
    ``examples`` and ``rewards``; ``correct`` is optional (tasks with a right answer)."""

    tokenizer: PreTrainedTokenizerFast
    splits: tuple[str, ...] = ("train",)  # "train" first, then evaluation splits
    max_new_tokens: int  # longest completion
    max_length: int  # longest prompt + completion
    has_answer: bool = False  # True when ``correct`` is implemented (enables accuracy evaluation)
    paired_splits: tuple[str, ...] = ()  # splits whose ``pairs(split, n, seed)`` gives equal-length ID twins

    @abstractmethod
    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """``n`` examples of ``split``, a deterministic function of ``seed``."""

    @abstractmethod
    def rewards(self, examples: list[Example], completions: list[list[int]]) -> list[float]:
        """Reward of each sampled completion (token ids, without the prompt)."""

    def correct(self, examples: list[Example], completions: list[list[int]]) -> list[bool]:
        """Whether each completion is right; tasks without a right answer keep this default."""
        raise TypeError(f"task {type(self).__name__} has no notion of a correct answer")
