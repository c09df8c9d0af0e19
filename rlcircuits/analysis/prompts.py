"""What the circuit analyses share: a split's prompts as one padded batch, the arms as hooked models, and the
config fields every such analysis has.

A split's prompts differ in length (rules and hands vary) and GPT-2's positions are absolute, so prompts are
right-padded — causal attention never lets a real token read the padding — and each row is read at its own
last prompt token, the one whose logits predict the answer. Offsets ≤ 0 from that read position line rows
up at their ends: in the cards game offset 0 is ``Answer:``, −1 the last card's value, −2 its colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlcircuits.registry import check
from rlcircuits.tasks.base import Example

if TYPE_CHECKING:  # imported where used: see rlcircuits/analysis/__init__.py
    from transformer_lens import HookedTransformer

ROLE = {"base": "init", "policy": "rl", "control": "sft"}  # checkpoint → the arm's name in results and plots


@dataclass
class CircuitConfig:
    """Fields of every circuit analysis. ``splits[0]`` is in distribution: probes and SAEs are trained there."""

    name: str = ""
    splits: list[str] = field(default_factory=lambda: ["test", "ood_colour", "ood_composition", "ood_paraphrase",
                                                       "ood_threshold"])
    n_examples: int = 600  # prompts per split
    seed: int = 0  # evaluation data seed (the top-level `seed`)

    def __post_init__(self):
        check(len(self.splits) >= 1, "splits", "needs at least the ID split")
        check(self.n_examples >= 8, "n_examples", f"{self.n_examples} is too few (≥ 8)")

    def check_task(self, task_cls) -> None:
        """Called before any work with the task's class: the splits must exist and answers must be checkable."""
        check(task_cls.has_answer, "task", f"analysis {self.name} needs a task with right answers (e.g. task=cards)")
        for s in self.splits:
            check(s in task_cls.splits, "splits", f"{s!r} is not a split of the task; valid: {', '.join(task_cls.splits)}")


@dataclass
class Prompts:
    """A split's prompts, right-padded: ``tokens`` [n, max_len], ``read_pos`` [n] (each row's last prompt
    token), ``answers`` [n] (the right first completion token), ``mask`` [n, max_len] (True on real tokens)."""

    tokens: torch.Tensor
    read_pos: torch.Tensor
    answers: torch.Tensor
    mask: torch.Tensor
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, rows) -> Prompts:
        rows = torch.as_tensor(rows, dtype=torch.long)
        length = int(self.read_pos[rows].max()) + 1 if len(rows) else 1
        return Prompts(self.tokens[rows, :length], self.read_pos[rows], self.answers[rows], self.mask[rows, :length],
                       [self.examples[i] for i in rows.tolist()])


def pad(examples: list[Example], pad_id: int) -> Prompts:
    """Right-pad the prompts of ``examples`` into one batch."""
    lengths = torch.tensor([len(e.prompt) for e in examples])
    tokens = torch.full((len(examples), int(lengths.max())), pad_id, dtype=torch.long)
    for row, e in enumerate(examples):
        tokens[row, : len(e.prompt)] = torch.tensor(e.prompt)
    mask = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    answers = torch.tensor([e.completion[0] for e in examples])
    return Prompts(tokens, lengths - 1, answers, mask, examples)


def split_prompts(task, cfg: CircuitConfig) -> dict[str, Prompts]:
    """``cfg.n_examples`` prompts of each of ``cfg.splits``."""
    pad_id = task.tokenizer.pad_token_id
    return {s: pad(task.examples(s, cfg.n_examples, cfg.seed), pad_id) for s in cfg.splits}


def at_offsets(acts: torch.Tensor, read_pos: torch.Tensor, offsets) -> torch.Tensor:
    """Activations [b, seq, d] at ``read_pos`` [b] + each offset (≤ 0): [b, n_offsets, d]."""
    index = read_pos[:, None] + torch.as_tensor(list(offsets))[None]  # [b, n_offsets]
    if (index < 0).any():
        raise ValueError(f"offsets {list(offsets)} reach before the start of a prompt")
    return acts[torch.arange(acts.shape[0])[:, None], index]


def hooked_arms(checkpoints: dict[str, Path]) -> dict[str, HookedTransformer]:
    """Every checkpoint as a ``HookedTransformer``, keyed by arm name (``init``, ``rl``, ``sft``)."""
    from rlcircuits.models.hooked import load_hooked

    return {ROLE.get(name, name): load_hooked(path) for name, path in checkpoints.items()}


@torch.no_grad()
def answer_logits(model: HookedTransformer, prompts: Prompts, batch_size: int = 256) -> torch.Tensor:
    """Logits at each row's read position, which predict the answer: [n, d_vocab]."""
    out = []
    for rows in torch.arange(len(prompts)).split(batch_size):
        logits = model(prompts.tokens[rows])  # [b, seq, d_vocab]
        out.append(logits[torch.arange(len(rows)), prompts.read_pos[rows]])
    return torch.cat(out)
