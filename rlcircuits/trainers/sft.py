"""Supervised fine-tuning: next-token cross-entropy on the completion tokens only.

The prompt is context, not a target (for the card game the loss is on the answer alone). Fresh examples
are drawn from the task every step, so "epochs" do not exist here: ``steps × batch_size`` sequences.
A batch's repeated sequences are run once, their loss weighted by how often they occur (``distinct``):
the same loss and gradient as running every row — toy_kl's batches of 256 hold at most 66 distinct
sequences, and its SFT takes 15 s instead of 22. ``backend=trl`` runs the same loss and data through
``trl.SFTTrainer``.

    python run.py experiment=toy_kl base.trainer.steps=3000
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlcircuits.models.softmax import log_softmax
from rlcircuits.tasks.base import Example, Task
from rlcircuits.trainers import TRAINERS, train_with_trl
from rlcircuits.trainers.common import TrainerConfig, clip_and_step, log_step, optimizer_and_schedule, step_seed


@dataclass
class SFTConfig(TrainerConfig):
    trl_trainer = "SFTTrainer"

    name: str = "sft"


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 off the completion), ``[B, T]``.

    Three tensors built from lists, not two per example: on toy_kl's 2,000 batches of 256 the per-example
    version took seconds of the run."""
    seqs = [e.prompt + e.completion for e in examples]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])  # [B, T]
    start = torch.tensor([len(e.prompt) for e in examples])[:, None]  # [B, 1] first completion column
    end = torch.tensor([len(s) for s in seqs])[:, None]  # [B, 1] first padding column
    col = torch.arange(width)  # [T]
    return {"input_ids": ids, "attention_mask": col < end,
            "labels": ids.masked_fill((col < start) | (col >= end), -100)}


def distinct(examples: list[Example], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``collate`` of the distinct examples (by prompt and completion), and how often each occurs, ``[U]``.

    Counted before collating (toy_kl's batches of 256 hold at most 66 distinct sequences): a third of the
    cost of collating every row and ``torch.unique``-ing them. Rows come in ``torch.unique``'s order
    (lexicographic in ids, then labels), which keeps the models SFT trains bit for bit what they were."""
    counts = Counter((tuple(e.prompt), tuple(e.completion)) for e in examples)
    batch = collate([Example(list(p), list(c)) for p, c in counts], pad_id)
    key = torch.cat([batch["input_ids"], batch["labels"]], 1).tolist()  # [U, 2T]
    order = torch.tensor(sorted(range(len(key)), key=key.__getitem__))
    return {k: v[order] for k, v in batch.items()}, torch.tensor(list(counts.values()))[order]


def weighted_loss(model, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the label tokens (not −100) of ``batch``, each row counted
    ``counts`` times: the loss HF computes from ``labels`` on the batch with the repeats put back."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]  # [U, T-1] position t predicts token t + 1
    nll = -log_softmax(logits.float()).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # [U, T-1]
    weight = counts[:, None] * (labels != -100)
    return (nll * weight).sum() / weight.sum()


@TRAINERS.register("sft", schema=SFTConfig)
def train(cfg: SFTConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place on the task's train split and return it (``reference`` is unused)."""
    if cfg.backend == "trl":
        return train_with_trl(cfg, policy, None, task, logger, stage, seed)
    device = next(policy.parameters()).device
    opt, sched = optimizer_and_schedule(policy.parameters(), cfg)
    policy.train()
    bar = tqdm(range(cfg.steps), desc=f"{stage} sft", leave=False)
    for step in bar:
        batch, counts = distinct(task.examples("train", cfg.batch_size, step_seed(seed, stage, step)),
                                 task.tokenizer.pad_token_id)
        loss = weighted_loss(policy, {k: v.to(device) for k, v in batch.items()}, counts.to(device))
        loss.backward()
        grad_norm = clip_and_step(policy, opt, sched, cfg)
        log_step(logger, bar, {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0]},
                 step, stage, cfg, policy, task, seed)
    return policy
