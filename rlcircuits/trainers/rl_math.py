"""The RL maths every trainer shares, as pure functions with shapes in their docstrings.

Conventions: ``logp`` is the log-probability of sampled tokens under the policy being trained,
``logp_ref`` under the frozen reference; ``mask`` is 1 on completion tokens and 0 on padding.
"""

from __future__ import annotations

import math

import torch


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π; shape of the inputs, e.g. ``[B, T]``.

    With ``d = logp_ref − logp``:
    - ``k1 = −d``: unbiased, high variance, can be negative.
    - ``k2 = d²/2``: biased, low variance, always ≥ 0.
    - ``k3 = eᵈ − d − 1``: unbiased and always ≥ 0 (Schulman's estimator).
    All three have the value of KL(π‖π_ref) in expectation (k2 only to second order), but their
    *gradients* differ when placed in a loss: only k1-in-the-reward (a score-function term) optimises
    E[r] − α·KL(π‖π_ref) exactly; the gradient of a k3 loss term is that of KL(π_ref‖π).
    """
    d = logp_ref - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: k1, k2, k3")


def full_kl(dist: torch.Tensor, dist_ref: torch.Tensor) -> torch.Tensor:
    """KL(π(·|y_<t) ‖ π_ref(·|y_<t)) of each next-token distribution, summed over the vocabulary: ``[B, T]``
    from log-probabilities ``[B, T, V]``. Exact where k1 is a one-sample estimate of it; differentiable."""
    return (dist.exp() * (dist - dist_ref)).sum(-1)


def kl_returns(reward: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, alpha: float, own: bool) -> torch.Tensor:
    """Return-to-go of each completion token under E[r] − α·KL, ``[B, T]`` (0 on padding).

    ``reward [B]`` comes at the end; ``kl [B, T]`` is the per-token KL term (no grad needed), ``mask [B, T]``.
    ``own=True``: G_t = r − α·Σ_{t'≥t} kl_t' — for sampled k1, whose score-function term at t' = t is
    what differentiates position t's KL. ``own=False``: G_t = r − α·Σ_{t'>t} kl_t' — for ``full_kl``,
    whose own position is differentiated directly instead (the loss adds α·Σ_t full_kl_t with its grad);
    full_kl_t depends on y_<t alone, so keeping it in G_t would add noise, not signal.
    Either way E[Σ_t G_t·∇log π(y_t|y_<t)] (+ that direct term) is ∇(E[r] − α·KL(π‖π_ref)).
    """
    kl = kl * mask
    to_go = kl.flip(-1).cumsum(-1).flip(-1)  # Σ_{t'≥t}
    if not own:
        to_go = to_go - kl
    return (reward[:, None] - alpha * to_go) * mask


def annealed_alpha(step: int, steps: int, alpha: float, start: float, anneal: float) -> float:
    """The KL coefficient at ``step`` of ``steps``: ``start`` falling geometrically to ``alpha`` over the
    first ``anneal`` of the steps, then ``alpha``; ``start`` 0 means ``alpha`` throughout."""
    span = anneal * steps
    if not start or step >= span:
        return alpha
    return start * (alpha / start) ** (step / span)


def dpg_weights(returns: torch.Tensor, alpha: float, log_p: torch.Tensor | None = None) -> torch.Tensor:
    """π*(y)/π(y) for samples y of π, self-normalised along the last dim (one prompt's samples), shape of
    ``returns``: the importance weights of distributional policy gradient (Khalifa et al. 2021), which
    minimises KL(π*‖π) for π* ∝ π_ref·exp(r/α).

    ``returns`` are the KL-shaped returns R = r − α·log(π(y)/π_ref(y)), so R/α = log(π*(y)/π(y)) + log Z
    and exp(R/α), normalised over the samples, estimates π*/π without knowing Z. ``log_p`` weighs the
    samples (default: equally, a batch drawn from π; an enumeration passes log π), and the weights average
    to 1 under it.
    """
    log_p = torch.full_like(returns, -math.log(returns.shape[-1])) if log_p is None else log_p
    return torch.exp(returns / alpha - torch.logsumexp(returns / alpha + log_p, -1, keepdim=True))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (all dims, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standard deviation (population) of ``x`` over entries where ``mask`` is 1, a scalar."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask).sqrt()


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-variance copy of ``x`` (any shape), statistics over entries where ``mask`` is 1;
    masked-out entries come back 0. Divides by ``masked_std + eps``."""
    if mask is None:
        return (x - x.mean()) / (x.std(unbiased=False) + eps)
    return (x - masked_mean(x, mask)) / (masked_std(x, mask) + eps) * mask


def group_baseline(rewards: torch.Tensor, group_size: int, kind: str) -> torch.Tensor:
    """Baseline for each of ``B = n_groups · group_size`` rewards, shape ``[B]``.

    Rewards are laid out group by group (the samples of one prompt together).
    - ``mean``: the group's mean. It includes the sample itself, so r − b = (K−1)/K·(r − b_rloo): the same
      unbiased direction as rloo, scaled down.
    - ``rloo``: the mean of the *other* samples in the group (leave-one-out: unbiased).
    """
    r = rewards.view(-1, group_size)  # [G, K]
    if kind == "mean":
        b = r.mean(1, keepdim=True).expand_as(r)
    elif kind == "rloo":
        if group_size < 2:
            raise ValueError("the rloo baseline needs at least 2 samples per prompt")
        b = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    else:
        raise ValueError(f"unknown baseline {kind!r}; valid: mean, rloo")
    return b.reshape(-1)


def prefix_baseline(returns: torch.Tensor, tokens: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-token leave-one-out baseline over samples that share the prefix, shape ``[B, C]``.

    ``returns`` and ``tokens`` (completion ids) are ``[B, C]``, laid out group by group. The baseline of
    token t of sample i is the mean return-to-go at t of the *other* samples of the same prompt whose
    completion agrees with sample i's before t; when no other sample does, it is the leave-one-out mean
    over the whole group at t. It depends only on the prefix and on other, independent samples, never on
    the token's own action, so the gradient stays unbiased; it is a value estimate of the prefix (what a
    critic would learn), so it removes the variance that earlier tokens put into later tokens' returns.
    """
    B, C = returns.shape
    if group_size < 2:
        raise ValueError("the prefix baseline needs at least 2 samples per prompt")
    key = torch.arange(B, device=returns.device) // group_size  # [B] the prompt, then the prefix so far
    width = int(tokens.max()) + 1 if tokens.numel() else 1
    out = torch.empty_like(returns)
    for t in range(C):
        g = returns[:, t]
        _, key = torch.unique(key, return_inverse=True)  # dense ids, so key * width stays small
        total = torch.zeros(B, dtype=g.dtype, device=g.device).index_add_(0, key, g)
        count = torch.zeros(B, dtype=g.dtype, device=g.device).index_add_(0, key, torch.ones_like(g))
        others = count[key] - 1
        same = (total[key] - g) / others.clamp(min=1)
        out[:, t] = torch.where(others > 0, same, group_baseline(g.contiguous(), group_size, "rloo"))
        key = key * width + tokens[:, t]
    return out


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantages ``(r − mean_group) / s``, shape ``[B]`` (rewards laid out by group).

    ``s`` by ``scale``: ``group`` = the group's std (DeepSeekMath), ``batch`` = the whole batch's std,
    ``none`` = 1 (Dr. GRPO: no per-prompt difficulty weighting). Std is the unbiased one, as in TRL.
    """
    r = rewards.view(-1, group_size)  # [G, K]
    centred = r - r.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown reward scaling {scale!r}; valid: group, batch, none")
    return centred.reshape(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over completion tokens; returns ``(advantages, returns)``, ``[B, T]``.

    ``rewards``, ``values`` and ``mask`` are ``[B, T]``; ``mask`` is 1 on a prefix of each row (the
    completion, right-padded). The episode ends after the last masked token (the value beyond it is 0):
    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1},  returns = A + V. Padding gets 0.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, averaged over masked tokens; returns ``(loss, stats)``.

    ``logp``, ``logp_old``, ``mask`` are ``[B, T]``; ``advantages`` is ``[B, T]`` or ``[B, 1]`` (broadcast).
    Loss = −mean min(ρ·A, clip(ρ, 1 ± clip)·A) with ρ = π/π_old. Stats (no grad): ``clip_frac`` (share of
    tokens where the clipped term was the active one) and ``approx_kl`` (k3 estimate of KL(π_old‖π)).
    """
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        }
    return loss, stats


def clipped_value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float) -> torch.Tensor:
    """½·mean max((V − R)², (V_old + clip(V − V_old, ±clip) − R)²) over masked tokens, all ``[B, T]``;
    ``clip = 0`` gives the plain squared error."""
    loss = (values - returns) ** 2
    if clip > 0:
        clipped = values_old + torch.clamp(values - values_old, -clip, clip)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var[target − predicted] / Var[target] over masked entries (all ``[B, T]``); 1 is perfect,
    ≤ 0 no better than a constant."""
    var_target = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    residual = target - predicted
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1 - var_residual / var_target.clamp(min=1e-12)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n: int) -> float:
    """Ziegler et al.'s proportional controller: move ``coef`` so the observed ``kl`` approaches ``target``.

    ``coef · (1 + clip(kl/target − 1, ±0.2) · n/horizon)``, after ``n`` more samples. It changes the
    objective being optimised over time: the policy no longer converges to the optimum for a fixed α.
    """
    error = min(max(kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * n / horizon)
