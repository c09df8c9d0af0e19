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
dropped it (seed-dependent TV 0.4 at α=1). ``backend=trl`` runs ``trl.RLOOTrainer`` (baseline=rloo only;
sequence-level KL, same objective).

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
from rlcircuits.trainers.rl_math import group_baseline, prefix_baseline
from rlcircuits.trainers.rollout import reference_logprobs, token_logprobs


@dataclass
class ReinforceConfig(TrainerConfig):
    trl_trainer = "RLOOTrainer"

    name: str = "reinforce"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    num_generations: int = 8  # samples per prompt; the baseline is computed within each prompt's group
    baseline: str = "rloo"  # rloo (leave-one-out over the group) | prefix (… over samples sharing the prefix; conf default) | mean

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        check(self.baseline in ("prefix", "rloo", "mean"), "baseline",
              f"{self.baseline!r} is not one of prefix, rloo, mean")
        check(self.num_generations >= (1 if self.baseline == "mean" else 2), "num_generations",
              f"{self.num_generations} is too few for the {self.baseline} baseline (rloo needs ≥ 2)")
        check(self.backend != "trl" or self.baseline == "rloo", "baseline",
              "TRL's RLOOTrainer has only the rloo baseline: use backend=trl baseline=rloo, or backend=native")


@TRAINERS.register("reinforce", schema=ReinforceConfig)
def train(cfg: ReinforceConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place against the frozen ``reference`` and return it.

    ``reference=None``: ``policy`` is a PEFT model and the reference is its base (adapter disabled).
    """
    if cfg.backend == "trl":
        return train_with_trl(cfg, policy, reference, task, logger, stage, seed)
    opt, sched = optimizer_and_schedule(policy.parameters(), cfg)
    bar = tqdm(range(cfg.steps), desc=f"{stage} reinforce", leave=False)
    for step in bar:
        # ---- rollout: k samples per prompt, their rewards and reference log-probabilities ----
        rollout, reward = collect(policy, task, cfg, cfg.num_generations, seed, stage, step)  # [B]
        mask = rollout.completion_mask.float()  # [B, C]
        logp_ref = reference_logprobs(policy, reference, rollout)  # [B, C] log π_ref(y_t | y_<t)

        # ---- update: one score-function step, each token on its KL-shaped return-to-go ----
        policy.train()
        logp = token_logprobs(policy, rollout)  # [B, C] log π(y_t | y_<t)
        kl_tok = (logp.detach() - logp_ref) * mask  # [B, C] per-token k1
        kl = kl_tok.sum(-1)  # [B] sequence-level k1
        shaped = reward - cfg.alpha * kl
        to_go = (reward[:, None] - cfg.alpha * kl_tok.flip(-1).cumsum(-1).flip(-1)) * mask  # [B, C] G_t
        if cfg.baseline == "prefix":
            baseline = prefix_baseline(to_go, rollout.sequences[:, rollout.prompt_len:], cfg.num_generations)
        else:
            baseline = torch.stack([group_baseline(g.contiguous(), cfg.num_generations, cfg.baseline)
                                    for g in to_go.unbind(1)], 1)
        advantage = (to_go - baseline) * mask  # [B, C]
        loss = -(advantage * logp).sum(-1).mean()
        loss.backward()
        grad_norm = clip_and_step(policy, opt, sched, cfg)

        log_step(logger, bar, {"train/reward": reward.mean(), "train/kl": kl.mean(), "train/objective": shaped.mean(),
                               "train/loss": loss, "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0]},
                 step, stage, cfg, policy, task, seed)
    return policy
