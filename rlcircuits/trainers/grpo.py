"""GRPO (Shao et al. 2024): group-relative advantages, a clipped ratio, and the KL wherever you choose.

For each prompt, ``num_generations`` completions; each one's advantage is its reward minus the group mean,
divided by the group's std (``scale_rewards=group``, DeepSeekMath), the batch's std (``batch``) or nothing
(``none``, Dr. GRPO). The policy takes ``num_iterations`` clipped steps on each rollout; the loss is a mean
over all completion tokens (TRL's default ``dapo`` aggregation). There is no value function.

Where the KL goes decides what is optimised — the reason ``kl.estimator`` and ``kl.placement`` are options:
- ``placement=reward, estimator=k1`` (r − α·Σ_t log π/π_ref before the advantages): the score-function
  gradient of E[r] − α·KL(π‖π_ref), so the fixed point is π* ∝ π_ref·e^{r/α} — when rewards are not
  rescaled (``scale_rewards=none``; a std scaling only changes the step size within a group, but in
  expectation it weights samples by a random factor). Same algorithm as ``reinforce`` with a mean baseline.
- ``placement=reward``, k2 or k3: the penalty is an estimate of the KL but the score-function gradient
  misses the penalty's own dependence on π (for k1 that term is E[∇log π] = 0; not for k2, k3): not π*.
- ``placement=loss, estimator=k3`` (the common recipe, and TRL's): α·mean_t k3 added to the loss. Its
  gradient, in expectation over π's samples, is that of Σ_t KL(π_ref(·|prefix)‖π(·|prefix)) — the
  *reverse* KL, token by token — and it sits beside advantages rescaled by the group std, so α trades
  off against standardised rewards, not rewards. The fixed point is not π*.
- ``placement=loss``, k2: gradient of Σ_t KL(π‖π_ref) at each prefix, ignoring how a token changes the
  KL of the tokens after it (exact only for one-token completions). ``loss``, k1: zero gradient in
  expectation — no regularisation at all.
``backend=trl`` runs ``trl.GRPOTrainer``, which implements k3 in the loss only (its default importance-ratio
factor on the KL, which changes that gradient to the per-token one of KL(π‖π_ref), is switched off).

    python run.py experiment=toy_kl trainer=grpo alpha=0.5
    python run.py experiment=toy_kl trainer=grpo trainer.kl.placement=reward trainer.kl.estimator=k1
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers import TRAINERS, train_with_trl
from rlcircuits.trainers.common import TrainerConfig, clip_and_step, collect, log_step, optimizer_and_schedule
from rlcircuits.trainers.rl_math import clipped_policy_loss, group_advantages, kl_estimate, masked_mean
from rlcircuits.trainers.rollout import reference_logprobs, token_logprobs


@dataclass
class KLPenalty:
    estimator: str = "k3"  # k1 | k2 | k3 (rl_math.kl_estimate)
    placement: str = "loss"  # loss (added per token to the loss) | reward (subtracted from r before advantages)


@dataclass
class GRPOConfig(TrainerConfig):
    trl_trainer = "GRPOTrainer"

    name: str = "grpo"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    num_generations: int = 8  # completions per prompt: the group the advantage is relative to
    scale_rewards: str = "group"  # group | batch | none: divide centred rewards by this std
    num_iterations: int = 1  # updates per rollout (μ); the clipped ratio matters from the second on
    clip: float = 0.2  # ratio clip ε
    kl: KLPenalty = field(default_factory=KLPenalty)

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        check(self.num_generations >= 2, "num_generations",
              f"{self.num_generations} < 2: group-relative advantages need at least 2 completions per prompt")
        check(self.scale_rewards in ("group", "batch", "none"), "scale_rewards",
              f"{self.scale_rewards!r} is not one of group, batch, none")
        check(self.num_iterations >= 1, "num_iterations", f"{self.num_iterations} must be ≥ 1")
        check(self.clip > 0, "clip", f"{self.clip} must be > 0")
        check(self.kl.estimator in ("k1", "k2", "k3"), "kl.estimator", f"{self.kl.estimator!r} is not one of k1, k2, k3")
        check(self.kl.placement in ("loss", "reward"), "kl.placement", f"{self.kl.placement!r} is not one of loss, reward")
        check(self.backend != "trl" or (self.kl.estimator, self.kl.placement) == ("k3", "loss"), "kl",
              "TRL's GRPOTrainer puts k3 in the loss only; use kl.estimator=k3 kl.placement=loss or backend=native")


@TRAINERS.register("grpo", schema=GRPOConfig)
def train(cfg: GRPOConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place against the frozen ``reference`` and return it.

    ``reference=None``: ``policy`` is a PEFT model and the reference is its base (adapter disabled).
    """
    if cfg.backend == "trl":
        return train_with_trl(cfg, policy, reference, task, logger, stage, seed)
    opt, sched = optimizer_and_schedule(policy.parameters(), cfg, cfg.num_iterations)
    bar = tqdm(range(cfg.steps), desc=f"{stage} grpo", leave=False)
    for step in bar:
        # ---- rollout: a group of completions per prompt, their rewards and reference log-probabilities ----
        rollout, reward = collect(policy, task, cfg, cfg.num_generations, seed, stage, step)  # [B]
        mask = rollout.completion_mask.float()  # [B, C]
        logp_ref = reference_logprobs(policy, reference, rollout)  # [B, C]

        # ---- update: num_iterations clipped steps; the first pass is on-policy, so it also gives π_old ----
        policy.train()
        for it in range(cfg.num_iterations):
            logp = token_logprobs(policy, rollout)  # [B, C]
            if it == 0:
                logp_old = logp.detach()
                penalty = (kl_estimate(logp_old, logp_ref, cfg.kl.estimator) * mask).sum(-1)  # [B]
                shaped = reward - cfg.alpha * penalty if cfg.kl.placement == "reward" else reward
                advantage = group_advantages(shaped, cfg.num_generations, cfg.scale_rewards)  # [B]
            loss, stats = clipped_policy_loss(logp, logp_old, advantage[:, None], mask, cfg.clip)
            if cfg.kl.placement == "loss":
                loss = loss + cfg.alpha * masked_mean(kl_estimate(logp, logp_ref, cfg.kl.estimator), mask)
            loss.backward()
            grad_norm = clip_and_step(policy, opt, sched, cfg)

        kl = ((logp_old - logp_ref) * mask).sum(-1)  # [B] sequence-level k1
        log_step(logger, bar, {"train/reward": reward.mean(), "train/kl": kl.mean(),
                               "train/objective": (reward - cfg.alpha * kl).mean(), "train/loss": loss,
                               "train/clip_frac": stats["clip_frac"], "train/approx_kl": stats["approx_kl"],
                               "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0]},
                 step, stage, cfg, policy, task, seed)
    return policy
