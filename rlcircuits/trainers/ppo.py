"""PPO with a per-token KL penalty in the reward: the RLHF recipe (Ziegler et al. 2019; Ouyang et al. 2022).

Each completion token is an action. Its reward is −α·(log π − log π_ref) for that token (k1), plus the
task's reward on the last token, so the return from the first token is r − α·log(π(y)/π_ref(y)) and the
fixed point is the same π* ∝ π_ref·exp(r/α) as REINFORCE's. What PPO adds: a learned value V(prefix) as
baseline and GAE(γ, λ) to trade bias for variance, and several epochs of minibatch updates per rollout kept
near the sampling policy by the clipped ratio. The value head is a separate small MLP on the policy's final
hidden state; its loss reaches the policy only with ``value_grad_to_policy=true``. Two options change the
objective, so both are off by default: ``entropy_coef`` adds coef·H(π), and the adaptive KL controller
(``target_kl`` > 0) moves α during training. λ < 1 is biased wherever the value is wrong.
``kl=full`` uses the exact KL of each position's next-token distribution instead of k1: the next position's
KL is a token's reward and its own position's KL is a loss term (divided by the advantages' std when they
are whitened), the same gradient in expectation. It is the conf default: k1 penalises a deviation only
once it is sampled. On the one of 10 toy_kl draws where k1 missed, ``benchmarks/toy_kl_trace.py`` (the
exact objective after every step) shows J falling below the base's on 95 of 300 steps, to 0.48 against
J* = 3.28 with the branch shares still on the optimum's (a branch's bits had left the base's), repaired and
broken again until, from step ~230, branch B's bits turned malformed and B fell to 0.06 against 0.17 —
every update within ``max_kl``. full's own-position term pulls such bits back at every sampled prefix
before a deviating token is drawn; on the same draw J never fell below the base's (final TV 0.001), and it
held on all 22 draws measured. k1 stores no [B, C, vocab] distributions, so it is the choice at LLM scale.
``max_kl`` (conf: 0.02) halves any update that moves the policy by more than that, in nats per sequence on
its minibatch (drawn by the rollout's policy, a few updates back: an estimate) — a bound the clipped ratio
does not give, since one step on a knife-edge weight can flip a whole context's distribution
(``common.step_within_kl``; docs/toy_kl.md, *Keeping every branch*). It bounds each update, not the 16
of a rollout together: bounding the distance from the rollout's policy instead did not save the one k1 draw
that drifted (docs/trainers.md).

    python run.py experiment=toy_kl trainer=ppo alpha=0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers import TRAINERS
from rlcircuits.trainers.common import TrainerConfig, collect, log_step, optimizer_and_schedule, step_within_kl
from rlcircuits.trainers.rl_math import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    full_kl,
    gae,
    masked_mean,
    masked_std,
    whiten,
)
from rlcircuits.trainers.rollout import reference_scores, score


@dataclass
class PPOConfig(TrainerConfig):
    name: str = "ppo"
    alpha: float = 0.1  # KL coefficient of the per-token k1 penalty in the reward (the top-level `alpha`)
    num_generations: int = 1  # samples per prompt (PPO needs no groups; the value is the baseline)
    update_epochs: int = 4  # passes over each rollout
    num_minibatches: int = 4  # minibatches per pass; updates per step = update_epochs · num_minibatches
    clip: float = 0.2  # policy ratio clip ε: the ratio π/π_old is kept in [1 − ε, 1 + ε]
    value_clip: float = 0.2  # value clip around the rollout's values; 0 = unclipped squared error
    value_coef: float = 0.5  # weight of the value loss
    entropy_coef: float = 0.0  # entropy bonus; ≠ 0 adds coef·H(π) to the objective (moves the optimum)
    gamma: float = 1.0  # discount per token
    gae_lambda: float = 0.95  # GAE λ: 1 = Monte-Carlo returns (unbiased), < 1 leans on the value
    norm_advantages: bool = True  # whiten advantages within each minibatch
    value_hidden: int = 64  # hidden width of the value head MLP; 0 = a linear head
    value_grad_to_policy: bool = False  # let the value loss train the policy's body too (shared features)
    kl: str = "k1"  # k1 (each sampled token's log-ratio as its reward) | full (exact per-position KL; see module doc)
    target_kl: float = 0.0  # adaptive KL controller's target sequence KL; 0 = α stays fixed
    kl_horizon: int = 10000  # controller horizon, in samples
    max_kl: float = 0.0  # > 0: halve an update that moves the policy by more, in nats per sequence (0 = off)

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        for key in ("num_generations", "update_epochs", "num_minibatches", "kl_horizon"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be ≥ 1")
        check(self.batch_size * self.num_generations >= self.num_minibatches, "num_minibatches",
              f"{self.num_minibatches} minibatches of {self.batch_size * self.num_generations} samples leaves some empty")
        check(self.clip > 0, "clip", f"{self.clip} must be > 0")
        for key in ("value_clip", "value_coef", "entropy_coef", "target_kl", "value_hidden", "max_kl"):
            check(getattr(self, key) >= 0, key, f"{getattr(self, key)} must be ≥ 0")
        check(0 <= self.gamma <= 1, "gamma", f"{self.gamma} is not in [0, 1]")
        check(0 <= self.gae_lambda <= 1, "gae_lambda", f"{self.gae_lambda} is not in [0, 1]")
        check(self.kl in ("k1", "full"), "kl", f"{self.kl!r} is not one of k1, full")


class ValueHead(nn.Module):
    """V(prefix) from the policy's final hidden state ``[..., D]`` → ``[...]``; its own parameters."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1)) if hidden \
            else nn.Linear(width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float()).squeeze(-1)


@TRAINERS.register("ppo", schema=PPOConfig)
def train(cfg: PPOConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Train ``policy`` in place against the frozen ``reference`` and return it (the value head is discarded).

    ``reference=None``: ``policy`` is a PEFT model and the reference is its base (adapter disabled).
    """
    device = next(policy.parameters()).device
    value_head = ValueHead(policy.config.get_text_config().hidden_size, cfg.value_hidden).to(device)
    updates = cfg.update_epochs * cfg.num_minibatches
    opt, sched = optimizer_and_schedule([*policy.parameters(), *value_head.parameters()], cfg, updates)
    kl_coef = cfg.alpha
    full = cfg.kl == "full"
    bar = tqdm(range(cfg.steps), desc=f"{stage} ppo", leave=False)
    for step in bar:
        # ---- rollout: samples, per-token rewards, values and advantages under the sampling policy ----
        rollout, reward = collect(policy, task, cfg, cfg.num_generations, seed, stage, step)  # [B]
        mask = rollout.completion_mask.float()  # [B, C]
        with torch.no_grad():
            old = score(policy, rollout, hidden=True, dist=full)
            values_old = value_head(old.hidden) * mask  # [B, C] V of the prefix before each token
        ref = reference_scores(policy, reference, rollout, dist=full)
        kl_tok = (full_kl(old.dist, ref.dist) if full else old.logp - ref.logp) * mask  # [B, C]
        # k1: a token's own log-ratio; full: the next position's KL (this one's is differentiated in the loss)
        rewards_tok = -kl_coef * (torch.cat([kl_tok[:, 1:], torch.zeros_like(kl_tok[:, :1])], 1) if full else kl_tok)
        last = mask.sum(1).long() - 1  # [B] index of each completion's last token
        rewards_tok[torch.arange(len(reward)), last] += reward
        advantages, returns = gae(rewards_tok, values_old, mask, cfg.gamma, cfg.gae_lambda)  # [B, C] each

        # ---- update: epochs of clipped policy and value steps on shuffled minibatches ----
        policy.train()
        stats, searches = [], []
        for _ in range(cfg.update_epochs):
            for rows in torch.randperm(len(reward), device=device).chunk(cfg.num_minibatches):
                new = score(policy, rollout[rows], entropy=True, hidden=True, dist=full)
                m = mask[rows]
                adv = whiten(advantages[rows], m) if cfg.norm_advantages else advantages[rows]
                policy_loss, ratio_stats = clipped_policy_loss(new.logp, old.logp[rows], adv, m, cfg.clip)
                hidden = new.hidden if cfg.value_grad_to_policy else new.hidden.detach()
                value_loss = clipped_value_loss(value_head(hidden), values_old[rows], returns[rows], m, cfg.value_clip)
                entropy = masked_mean(new.entropy, m)
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                if full:  # divided as the advantages were, so the sum stays the objective's gradient
                    scale = masked_std(advantages[rows], m) + 1e-8 if cfg.norm_advantages else 1.0
                    loss = loss + kl_coef / scale * masked_mean(full_kl(new.dist, ref.dist[rows]), m)
                loss.backward()
                grad_norm, search = step_within_kl([policy, value_head], opt, sched, cfg, rollout[rows],
                                                   new.logp.detach(), cfg.max_kl)
                stats.append(torch.stack([loss, policy_loss, value_loss, entropy, *ratio_stats.values()]).detach())
                searches.append(search)

        kl = kl_tok.sum(-1)  # [B] sequence-level k1
        if cfg.target_kl > 0:
            kl_coef = adaptive_kl_coef(kl_coef, kl.mean().item(), cfg.target_kl, cfg.kl_horizon, len(reward))
        mean = torch.stack(stats).mean(0)
        log_step(logger, bar, {
            "train/reward": reward.mean(), "train/kl": kl.mean(), "train/objective": (reward - cfg.alpha * kl).mean(),
            "train/loss": mean[0], "train/policy_loss": mean[1], "train/value_loss": mean[2], "train/entropy": mean[3],
            "train/clip_frac": mean[4], "train/approx_kl": mean[5],
            "train/explained_variance": explained_variance(values_old, returns, mask), "train/kl_coef": kl_coef,
            "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0],
            **({"train/step_kl": max(s["train/step_kl"] for s in searches),  # the largest update's, and all halvings
                "train/halvings": sum(s["train/halvings"] for s in searches)} if cfg.max_kl else {}),
        }, step, stage, cfg, policy, task, seed)
    return policy
