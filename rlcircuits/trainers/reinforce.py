"""REINFORCE with the KL penalty in the reward: maximises E[r] − α·KL(π‖π_ref) exactly.

Each token's reward is its k1 log-ratio −α·(log π(y_t|y_<t) − log π_ref(y_t|y_<t)), plus the task's
reward r at the end, so a sequence's return is r − α·log(π(y)/π_ref(y)). Each token follows its
return-to-go G_t = r − α·Σ_{t'≥t} log-ratio_{t'}: the score-function gradient
E[Σ_t (G_t − b_t)·∇log π(y_t|y_<t)]. Dropping the rewards *before* t (causality) and the term E[∇log π] = 0
leave it the true gradient of the regularised objective, whose optimum is π*(y) ∝ π_ref(y)·exp(r(y)/α) —
the quantity ``analysis=kl_optimum`` computes exactly. The baseline ``b_t`` comes from the other
``num_generations`` samples of the same prompt: ``prefix`` (the conf default) = the leave-one-out mean of
G_t over those that share the prefix y_<t (a critic-free value of the prefix), ``rloo`` = leave-one-out
over the whole group, ``mean`` = the group mean. Without the prefix baseline the bits of one branch are
credited with the other branches' returns. ``kl=full`` replaces each sampled log-ratio by the exact KL of
that position's next-token distribution: its own position differentiated directly, later positions in
G_t — the same gradient in expectation (tests/test_rl_math.py checks both against the exact one).

``max_kl`` bounds each step by TRPO's backtracking line search: after the optimiser's step, halve it while
KL(π_before‖π), estimated on the rollout just drawn from π_before, exceeds ``max_kl`` nats per sequence
(one more forward pass per try). Why: on toy_kl's 3-wide model a LayerNorm keeps only the direction of its
centred input, and RL's steps drove the smallest such input from norm 0.10 to 0.004; the step that carried
it past zero flipped the direction, and with it a whole branch's continuation — exact full-batch Adam, with no
sampling at all, did it in one step (J 3.25 → 0.43). RL then seldom samples that branch and does not
repair it. The median step there moves the policy by 1e-5 nats and such steps by 0.1–3, so the bound
touches only them. The conf's 10 % warm-up is for the same model: Adam's first step moves every weight by
the full lr whatever the size of its gradient. ``backend=trl`` runs ``trl.RLOOTrainer`` (baseline=rloo
and k1 only; sequence-level KL, same objective), with the line search as a callback (``trl_backend.py``).

``alpha_start`` anneals the KL coefficient: it starts there and falls geometrically to ``alpha`` over the
first ``alpha_anneal`` of the steps, then stays, so the objective RL ends on is the same. Straight at a small α
the exact search on the 211-parameter toy model stops in basins that miss π* (parity, ``palindrome``,
``unique``); followed down from α = 4, where π* is near the base, it reaches the optimum on each. RL follows
that path only slowly (lr 1e-2, ``alpha_anneal=0.8``: from 8 over 6,000 steps 46 of the 48 reward cells on
one draw, parity at α = 0.5 not on every draw; from 4 over 9,000 steps all 48; at 1,500 steps no
better than without the anneal; docs/toy_kl.md, *Annealing α*), seven to eleven times the 60 s
budget of one α, so it is off by default. TRL's RLOOTrainer keeps its coefficient fixed, hence native only.

``objective=dpg`` swaps what each token is weighted by: instead of its return, its sequence's importance
weight π*(y)/π(y) (``dpg_weights``: exp(R/α) normalised over each prompt's samples, as Z depends on the
prompt), the same prefix baseline subtracted. That is distributional policy gradient (Khalifa et al. 2021; Korbak et al. 2022 compare it with
KL-penalised RL): a sampled gradient of −KL(π*‖π), the other direction of the same divergence, with the same
optimum π* when the model can represent it. When it cannot, the two part: RL's KL(π‖π*) is mode-seeking
and the reward-maximising policy of a model that cannot tilt a branch puts less mass on it, while KL(π*‖π)
splits into the branch token's KL plus the branches' own, so DPG matches π*'s branch shares even where it
fits the bits inside a branch poorly. TRL has no DPG trainer, and it is REINFORCE's loop with another
weight, hence here.

    python run.py experiment=toy_kl trainer=reinforce alpha=0.5
    python run.py experiment=toy_kl trainer.objective=dpg alpha=0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers import TRAINERS, train_with_trl
from rlcircuits.trainers.common import TrainerConfig, collect, log_step, optimizer_and_schedule, step_within_kl
from rlcircuits.trainers.rl_math import (
    annealed_alpha,
    dpg_weights,
    full_kl,
    group_baseline,
    kl_returns,
    prefix_baseline,
)
from rlcircuits.trainers.rollout import reference_scores, score


@dataclass
class ReinforceConfig(TrainerConfig):
    trl_trainer = "RLOOTrainer"

    name: str = "reinforce"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    num_generations: int = 8  # samples per prompt; the baseline is computed within each prompt's group
    baseline: str = "rloo"  # rloo (leave-one-out over the group) | prefix (… sharing the prefix; conf default) | mean
    kl: str = "k1"  # k1 (each sampled token's log-ratio) | full (each position's exact KL over the vocabulary)
    max_kl: float = 0.0  # > 0: halve a step until the policy moved by ≤ this many nats per sequence (0 = off)
    alpha_start: float = 0.0  # > 0: the KL coefficient starts here, falling geometrically to alpha (0 = off)
    alpha_anneal: float = 0.5  # fraction of the steps over which it falls
    objective: str = "rl"  # rl (max E[r] − α·KL(π‖π_ref), i.e. min KL(π‖π*)) | dpg (min KL(π*‖π))

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
        check(self.alpha_start == 0 or self.alpha_start >= self.alpha > 0, "alpha_start",
              f"{self.alpha_start} must be 0 (off) or ≥ alpha ({self.alpha}), with alpha > 0")
        check(0 < self.alpha_anneal <= 1, "alpha_anneal", f"{self.alpha_anneal} must be a fraction in (0, 1]")
        check(self.backend != "trl" or not self.alpha_start, "alpha_start",
              "TRL's RLOOTrainer keeps its KL coefficient fixed: use alpha_start=0, or backend=native")
        check(self.max_kl >= 0, "max_kl", f"{self.max_kl} must be ≥ 0 (0 turns the line search off)")
        check(self.objective in ("rl", "dpg"), "objective", f"{self.objective!r} is not one of rl, dpg")
        check(self.objective == "rl" or (self.backend == "native" and self.kl == "k1" and self.alpha > 0), "objective",
              "dpg needs backend=native, kl=k1 (its weight is the sampled sequence's log-ratio) and alpha > 0")


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
        alpha = annealed_alpha(step, cfg.steps, cfg.alpha, cfg.alpha_start, cfg.alpha_anneal)
        to_go = kl_returns(reward, penalty, mask, alpha, own=not full)  # [B, C] G_t
        extra = {}
        if cfg.objective == "dpg":  # every token carries its sequence's π*/π; G_0 is the whole return R
            weight = dpg_weights(to_go[:, 0].view(-1, cfg.num_generations), alpha).view(-1)  # [B], per prompt
            to_go = weight[:, None] * mask
            extra["train/ess"] = weight.sum() ** 2 / (weight**2).sum() / len(weight)  # effective sample share
        if cfg.baseline == "prefix":
            baseline = prefix_baseline(to_go, rollout.sequences[:, rollout.prompt_len:], cfg.num_generations)
        else:
            baseline = torch.stack([group_baseline(g.contiguous(), cfg.num_generations, cfg.baseline)
                                    for g in to_go.unbind(1)], 1)
        advantage = (to_go - baseline) * mask  # [B, C]
        loss = (-(advantage * new.logp).sum(-1) + (alpha * kl_tok.sum(-1) if full else 0)).mean()
        loss.backward()
        grad_norm, search = step_within_kl(policy, opt, sched, cfg, rollout, new.logp.detach(), cfg.max_kl)
        log_step(logger, bar, {"train/reward": reward.mean(), "train/kl": kl.mean(), "train/loss": loss,
                               "train/objective": (reward - cfg.alpha * kl).mean(), "train/alpha": alpha, "train/grad_norm": grad_norm,
                               "train/lr": sched.get_last_lr()[0], **search, **extra}, step, stage, cfg, policy, task, seed)
    return policy
