"""REINFORCE with the KL penalty in the reward: maximises E[r] − α·KL(π‖π_ref) exactly.

Each sample's reward is shaped by the sequence-level log-ratio, r̃ = r − α·(log π(y) − log π_ref(y)), and
the policy follows the score-function gradient E[(r̃ − b)·∇log π(y)]. Because the extra term
E[∇log π(y)] is zero, this is the true gradient of the regularised objective, whose optimum is
π*(y) ∝ π_ref(y)·exp(r(y)/α) — the quantity ``analysis=kl_optimum`` computes exactly.
The baseline ``b`` is the group mean or the leave-one-out mean (``rloo``) over ``num_generations``
samples of the same prompt. ``backend=trl`` runs the same algorithm as ``trl.RLOOTrainer`` (rloo only).

    python run.py experiment=toy_kl trainer=reinforce alpha=0.5
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers import TRAINERS, trl_backend
from rlcircuits.trainers.common import TrainerConfig, clip_and_step, collect, log_step, optimizer_and_schedule
from rlcircuits.trainers.rl_math import group_baseline
from rlcircuits.trainers.rollout import reference_logprobs, token_logprobs


@dataclass
class ReinforceConfig(TrainerConfig):
    trl_trainer = "RLOOTrainer"

    name: str = "reinforce"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    num_generations: int = 8  # samples per prompt; the baseline is computed within each prompt's group
    baseline: str = "rloo"  # rloo (leave-one-out, unbiased) | mean

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        check(self.baseline in ("rloo", "mean"), "baseline", f"{self.baseline!r} is not one of rloo, mean")
        check(self.num_generations >= (2 if self.baseline == "rloo" else 1), "num_generations",
              f"{self.num_generations} is too few for the {self.baseline} baseline (rloo needs ≥ 2)")
        check(self.backend != "trl" or self.baseline == "rloo", "baseline",
              "TRL's RLOOTrainer has only the rloo baseline; use baseline=rloo or backend=native")


@TRAINERS.register("reinforce", schema=ReinforceConfig)
def train(cfg: ReinforceConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place against the frozen ``reference`` and return it.

    ``reference=None``: ``policy`` is a PEFT model and the reference is its base (adapter disabled).
    """
    if cfg.backend == "trl":
        return trl_backend.train(cfg, policy, reference, task, logger, stage, seed)
    opt, sched = optimizer_and_schedule(policy.parameters(), cfg)
    bar = tqdm(range(cfg.steps), desc=f"{stage} reinforce", leave=False)
    for step in bar:
        # ---- rollout: k samples per prompt, their rewards and reference log-probabilities ----
        rollout, reward = collect(policy, task, cfg, cfg.num_generations, seed, stage, step)  # [B]
        logp_ref = reference_logprobs(policy, reference, rollout).sum(-1)  # [B] log π_ref(y)

        # ---- update: one score-function step on the KL-shaped reward ----
        policy.train()
        logp = token_logprobs(policy, rollout).sum(-1)  # [B] log π(y)
        kl = logp.detach() - logp_ref  # [B] sequence-level k1
        shaped = reward - cfg.alpha * kl
        advantage = shaped - group_baseline(shaped, cfg.num_generations, cfg.baseline)
        loss = -(advantage * logp).mean()
        loss.backward()
        grad_norm = clip_and_step(policy, opt, sched, cfg)

        log_step(logger, bar, {"train/reward": reward.mean(), "train/kl": kl.mean(), "train/objective": shaped.mean(),
                               "train/loss": loss, "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0]},
                 step, stage, cfg, policy, task, seed)
    return policy
