"""Plumbing every trainer loop shares: the config fields, optimiser and schedule, drawing a rollout,
logging and evaluation.

Kept apart from the algorithms so that two trainer files differ only in what the algorithms differ in.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from rlcircuits.registry import check
from rlcircuits.tasks.base import Example, Task
from rlcircuits.trainers.rl_math import kl_estimate
from rlcircuits.trainers.rollout import Rollout, sample, score


@dataclass
class TrainerConfig:
    trl_trainer: ClassVar[str | None] = None  # the TRL class that runs this algorithm, if TRL has one

    name: str = ""
    backend: str = "native"  # native (our torch loop) | trl (the same algorithm through TRL)
    steps: int = 1000  # batches (SFT) or rollouts (RL; PPO and GRPO make several updates per rollout)
    batch_size: int = 64  # prompts (RL) or sequences (SFT) per step
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup: float = 0.0  # fraction of steps with linear warm-up
    final_lr: float = 0.0  # fraction of peak lr reached at the end (cosine decay)
    weight_decay: float = 0.0
    beta1: float = 0.9  # AdamW's momentum (lower turns faster where the loss surface turns sharply)
    beta2: float = 0.999  # AdamW's second-moment decay (0.95 adapts the step size faster)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    log_every: int = 10  # steps between metric lines
    eval_every: int = 0  # steps between accuracy evaluations (tasks with answers); 0 = only at the end
    eval_examples: int = 256  # examples per evaluation split

    def __post_init__(self):
        for key in ("steps", "batch_size", "log_every", "eval_examples"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be ≥ 1")
        check(self.lr > 0, "lr", f"{self.lr} must be > 0")
        check(0 <= self.warmup < 1, "warmup", f"{self.warmup} must be a fraction in [0, 1)")
        check(0 <= self.final_lr <= 1, "final_lr", f"{self.final_lr} must be a fraction in [0, 1]")
        check(0 <= self.beta1 < 1, "beta1", f"{self.beta1} must be in [0, 1)")
        check(0 <= self.beta2 < 1, "beta2", f"{self.beta2} must be in [0, 1)")
        check(self.grad_clip >= 0, "grad_clip", f"{self.grad_clip} must be ≥ 0")
        check(self.eval_every >= 0, "eval_every", f"{self.eval_every} must be ≥ 0")
        check(self.backend in ("native", "trl"), "backend", f"{self.backend!r} is not one of native, trl")
        check(self.backend != "trl" or self.trl_trainer is not None, "backend",
              f"TRL has no {self.name} trainer (TRL 1.x has no PPO or SAC); use backend=native")


def optimizer_and_schedule(params, cfg: TrainerConfig, updates_per_step: int = 1):
    """AdamW with linear warm-up then cosine decay to ``final_lr · lr``, over ``steps × updates_per_step``
    optimiser updates (PPO and GRPO take several updates per rollout)."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                            fused=True)  # fused: one kernel, not one per tensor
    total = cfg.steps * updates_per_step
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def trainable(model) -> list[torch.Tensor]:
    """``model``'s parameters that the optimiser updates (all of them, or only the adapter's under LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def clip_and_step(model, opt, sched, cfg: TrainerConfig) -> float:
    """Clip gradients, step optimiser and schedule; returns the first module's pre-clip grad norm.

    ``model`` is one module or a list of them (PPO: the policy, then its value head). Each module's
    gradient is clipped on its own, so one never rescales the other's step.
    """
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norms = [torch.nn.utils.clip_grad_norm_(trainable(m), max_norm)
             for m in (model if isinstance(model, list) else [model])]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(norms[0])


@torch.no_grad()
def backtrack(model, before: list[torch.Tensor], moved: Callable[[], float], max_kl: float,
              tries: int = 10) -> tuple[float, int]:
    """Halve the update just taken, θ ← (θ + θ_before)/2, until ``moved()`` ≤ ``max_kl``.

    TRPO's backtracking line search, applied to whatever step the optimiser took. ``before`` holds the
    ``trainable`` parameters from before the step; ``moved()`` measures how far, in KL, the policy now is
    from the one that drew the data. Returns that KL and the number of halvings (at most ``tries``).
    """
    kl, halvings = moved(), 0
    while kl > max_kl and halvings < tries:
        for p, b in zip(trainable(model), before):
            p.lerp_(b, 0.5)
        kl, halvings = moved(), halvings + 1
    return kl, halvings


def moved_from(policy, rollout: Rollout, logp_before: torch.Tensor) -> Callable[[], float]:
    """A function measuring KL(π_0‖π) per sequence, π being ``policy`` as it is when called: k3 on
    ``rollout``, which π_0 drew and gave token log-probabilities ``logp_before [B, C]``."""
    mask = rollout.completion_mask
    return lambda: float((kl_estimate(logp_before, score(policy, rollout).logp, "k3") * mask).sum(-1).mean())


def step_within_kl(model, opt, sched, cfg: TrainerConfig, rollout: Rollout, logp_before: torch.Tensor,
                   max_kl: float) -> tuple[float, dict[str, float]]:
    """``clip_and_step``, then, if ``max_kl`` > 0, ``backtrack`` the policy's part of the step (``model``, or
    its first module) until the policy is within ``max_kl`` nats per sequence of the one that drew
    ``rollout`` (``moved_from``). Returns the grad norm and the search's metrics."""
    policy = model[0] if isinstance(model, list) else model
    before = [p.detach().clone() for p in trainable(policy)] if max_kl else []
    grad_norm = clip_and_step(model, opt, sched, cfg)
    if not max_kl:
        return grad_norm, {}
    kl, halvings = backtrack(policy, before, moved_from(policy, rollout, logp_before), max_kl)
    return grad_norm, {"train/step_kl": kl, "train/halvings": halvings}


def step_seed(seed: int, stage: str, step: int) -> int:
    """A distinct, reproducible data seed per (run seed, stage, step); unlike ``hash``, stable across
    processes."""
    return zlib.crc32(f"{seed}/{stage}/{step}".encode())


def repeat(examples: list[Example], k: int) -> list[Example]:
    """Each example ``k`` times in a row: the group layout rl_math's baselines expect."""
    return [e for e in examples for _ in range(k)]


def collect(policy, task: Task, cfg: TrainerConfig, k: int, seed: int, stage: str, step: int):
    """Sample ``k`` completions for each of ``cfg.batch_size`` fresh training prompts.

    Returns the rollout (``B = batch_size · k`` rows, grouped by prompt) and the task's rewards ``[B]``.
    """
    examples = repeat(task.examples("train", cfg.batch_size, step_seed(seed, stage, step)), k)
    rollout = sample(policy, examples, task.tokenizer, task.max_new_tokens)
    rewards = task.rewards(examples, rollout.completions)
    return rollout, torch.tensor(rewards, dtype=torch.float, device=rollout.sequences.device)


SHOWN = ("train/reward", "train/kl", "train/loss")  # metrics on the progress bar


def log_step(logger, bar, metrics: dict, step: int, stage: str, cfg: TrainerConfig, policy, task: Task,
             seed: int) -> None:
    """Log ``metrics`` every ``log_every`` steps and at the last one, adding evaluation every ``eval_every``
    steps and at the end; show reward and KL (or loss) on the progress bar."""
    last = step == cfg.steps - 1
    if step % cfg.log_every and not last:
        return
    metrics = {k: float(torch.as_tensor(v).detach()) for k, v in metrics.items()}
    if last or (cfg.eval_every and step % cfg.eval_every == 0):
        metrics |= evaluate(policy, task, cfg, seed)
    logger.log(metrics, step, stage)
    bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in metrics.items() if k in SHOWN})


@torch.no_grad()
def accuracy(model, task: Task, split: str, n: int, seed: int) -> float:
    """Greedy-decoding accuracy on ``n`` examples of ``split``."""
    examples = task.examples(split, n, seed)
    rollout = sample(model, examples, task.tokenizer, task.max_new_tokens, greedy=True)
    return sum(task.correct(examples, rollout.completions)) / n


def evaluate(model, task: Task, cfg: TrainerConfig, seed: int) -> dict[str, float]:
    """``eval/<split>/accuracy`` for every evaluation split, or ``{}`` for tasks without answers."""
    if not task.has_answer:
        return {}
    return {f"eval/{s}/accuracy": accuracy(model, task, s, cfg.eval_examples, seed) for s in task.splits[1:]}
