"""REINFORCE with the KL penalty in the reward: maximises E[r] − α·KL(π‖π_ref) exactly.

Each token's reward is its k1 log-ratio −α·(log π(y_t|y_<t) − log π_ref(y_t|y_<t)), plus the task's
reward r at the end, so a sequence's return is r − α·log(π(y)/π_ref(y)). Each token follows its
return-to-go G_t = r − α·Σ_{t'≥t} log-ratio_{t'}: the score-function gradient E[Σ_t (G_t − b_t)·∇log π(y_t|y_<t)].
Dropping the rewards *before* t (causality) and the term E[∇log π] = 0 leave it the true gradient of the
regularised objective, whose optimum is π*(y) ∝ π_ref(y)·exp(r(y)/α) — the quantity
``analysis=kl_optimum`` computes exactly. The baseline ``b_t`` comes from the other ``num_generations``
samples of the same prompt: ``prefix`` (conf/trainer/reinforce.yaml) = the leave-one-out mean of G_t over those that share the
prefix y_<t (a critic-free value of the prefix), ``rloo`` = leave-one-out over the whole group, ``mean`` =
the group mean. Without the prefix baseline the bits of one branch are credited with the other branches'
returns; on toy_kl that noise, through the shared weights, corrupted a deterministic branch and RL then
dropped it (seed-dependent TV 0.4 at α=1). ``kl=full`` replaces each sampled log-ratio by the exact KL of
that position's next-token distribution: its own position differentiated directly, later positions in
G_t — the same gradient in expectation (tests/test_rl_math.py checks both against the exact one). It sees a
rare deviation's probability before one is sampled, but r − α·log(π/π_ref) is the same for every sequence
at the optimum, so k1 returns lose their variance there and full ones do not. ``backend=trl`` runs
``trl.RLOOTrainer`` (baseline=rloo and k1 only; sequence-level KL, same objective).

    python run.py experiment=toy_kl trainer=reinforce alpha=0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers import TRAINERS, train_with_trl
from rlcircuits.trainers.common import TrainerConfig, clip_and_step, collect, log_step, optimizer_and_schedule
from rlcircuits.trainers.rl_math import full_kl, group_baseline, kl_returns, prefix_baseline
from rlcircuits.trainers.rollout import reference_scores, score


@dataclass
class ReinforceConfig(TrainerConfig):
    trl_trainer = "RLOOTrainer"

    name: str = "reinforce"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    num_generations: int = 8  # samples per prompt; the baseline is computed within each prompt's group
    baseline: str = "rloo"  # rloo (leave-one-out over the group) | prefix (… over samples sharing the prefix; conf default) | mean
    kl: str = "k1"  # k1 (each sampled token's log-ratio) | full (each position's exact KL over the vocabulary)

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        check(self.baseline in ("prefix", "rloo", "mean"), "baseline",
              f"{self.baseline!r} is not one of prefix, rloo, mean")
        check(self.num_generations >= (1 if self.baseline == "mean" else 2), "num_generations",
              f"{self.num_generations} is too few for the {self.baseline} baseline (rloo needs ≥ 2)")
        check(self.backend != "trl" or self.baseline == "rloo", "baseline",
              "TRL's RLOOTrainer has only the rloo baseline: use backend=trl baseline=rloo, or backend=native")
        check(self.kl in ("k1", "full"), "kl", f"{self.kl!r} is not one of k1, full")
        check(self.backend != "trl" or self.kl == "k1", "kl",
              "TRL's RLOOTrainer has only k1: use kl=k1, or backend=native")


@TRAINERS.register("reinforce", schema=ReinforceConfig)
def train(cfg: ReinforceConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place against the frozen ``reference`` and return it.

    ``reference=None``: ``policy`` is a PEFT model and the reference is its base (adapter disabled).
    """
    if cfg.backend == "trl":
        return train_with_trl(cfg, policy, reference, task, logger, stage, seed)
    opt, sched = optimizer_and_schedule(policy.parameters(), cfg)
    bar = tqdm(range(cfg.steps), desc=f"{stage} reinforce", leave=False)
    full = cfg.kl == "full"
    for step in bar:
        # ---- rollout: k samples per prompt, their rewards and reference log-probabilities ----
        rollout, reward = collect(policy, task, cfg, cfg.num_generations, seed, stage, step)  # [B]
        mask = rollout.completion_mask.float()  # [B, C]
        ref = reference_scores(policy, reference, rollout, dist=full)  # log π_ref(y_t | y_<t) [B, C] (, [B, C, V])

        # ---- update: one score-function step, each token on its KL-shaped return-to-go ----
        policy.train()
        new = score(policy, rollout, dist=full)  # log π(y_t | y_<t) [B, C] (, [B, C, V])
        kl_tok = (full_kl(new.dist, ref.dist) if full else new.logp.detach() - ref.logp) * mask  # [B, C]
        penalty = kl_tok.detach()
        kl = penalty.sum(-1)  # [B] sequence KL (exact per position, or its k1 estimate)
        to_go = kl_returns(reward, penalty, mask, cfg.alpha, own=not full)  # [B, C] G_t
        if cfg.baseline == "prefix":
            baseline = prefix_baseline(to_go, rollout.sequences[:, rollout.prompt_len:], cfg.num_generations)
        else:
            baseline = torch.stack([group_baseline(g.contiguous(), cfg.num_generations, cfg.baseline)
                                    for g in to_go.unbind(1)], 1)
        advantage = (to_go - baseline) * mask  # [B, C]
        loss = (-(advantage * new.logp).sum(-1) + (cfg.alpha * kl_tok.sum(-1) if full else 0)).mean()
        loss.backward()
        grad_norm = clip_and_step(policy, opt, sched, cfg)

        log_step(logger, bar, {"train/reward": reward.mean(), "train/kl": kl.mean(),
                               "train/objective": (reward - cfg.alpha * kl).mean(), "train/loss": loss,
                               "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0]},
                 step, stage, cfg, policy, task, seed)
    return policy
