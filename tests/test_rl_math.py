"""The shared RL maths against hand computations and exact expectations on small categoricals.

The KL tests also check the claims the trainers' docstrings rest on: which estimator, placed where, has the
gradient of which divergence.
"""

import itertools

import pytest
import torch

from rlcircuits.trainers.rl_math import (
    adaptive_kl_coef,
    annealed_alpha,
    clipped_policy_loss,
    clipped_value_loss,
    dpg_weights,
    explained_variance,
    full_kl,
    gae,
    group_advantages,
    group_baseline,
    kl_estimate,
    kl_returns,
    masked_mean,
    whiten,
)


def test_gae_matches_hand_computation():
    # γ = 0.9, λ = 0.8. Row 1: three tokens. Row 2: two tokens, then padding (whose values must be ignored).
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 1: δ = (−0.32, 0.16, 0.6); A2 = 0.6, A1 = 0.16 + 0.72·0.6, A0 = −0.32 + 0.72·A1
    # row 2: δ = (−0.55, 1.5);       A1 = 1.5, A0 = −0.55 + 0.72·1.5
    expected = torch.tensor([[0.10624, 0.592, 0.6], [0.53, 1.5, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.60624, 0.792, 1.0], [1.53, 2.0, 0.0]]), atol=1e-6)


def test_gae_with_lambda_one_is_monte_carlo_return_minus_value():
    rewards, values = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.ones(4, 5)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    mc = rewards.flip(-1).cumsum(-1).flip(-1)  # reward-to-go
    assert torch.allclose(ret, mc, atol=1e-5)
    assert torch.allclose(adv, mc - values, atol=1e-5)


@pytest.fixture
def categoricals():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    return p, q


def test_kl_estimators_match_their_formulas(categoricals):
    p, q = categoricals
    logp, logq = p.log(), q.log()
    r = q / p  # π_ref / π
    assert torch.allclose(kl_estimate(logp, logq, "k1"), -r.log())
    assert torch.allclose(kl_estimate(logp, logq, "k2"), 0.5 * r.log() ** 2)
    assert torch.allclose(kl_estimate(logp, logq, "k3"), r - 1 - r.log())
    assert (kl_estimate(logp, logq, "k3") >= 0).all() and (kl_estimate(logp, logq, "k2") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, logq, "k4")


def test_kl_estimators_expectation_vs_exact_kl(categoricals):
    p, q = categoricals
    exact = (p * (p.log() - q.log())).sum()  # KL(p‖q)
    expect = {k: (p * kl_estimate(p.log(), q.log(), k)).sum() for k in ("k1", "k2", "k3")}
    assert torch.allclose(expect["k1"], exact, atol=1e-6)  # unbiased
    assert torch.allclose(expect["k3"], exact, atol=1e-6)  # unbiased
    assert not torch.allclose(expect["k2"], exact, atol=1e-3)  # biased far from q …
    near = torch.softmax(q.log() + 0.05 * torch.randn(6, generator=torch.Generator().manual_seed(1)), 0)
    exact_near = (near * (near.log() - q.log())).sum()
    k2_near = (near * kl_estimate(near.log(), q.log(), "k2")).sum()
    assert abs(k2_near - exact_near) < 0.05 * exact_near  # … but right to second order close to it


def surrogate_gradients(q: torch.Tensor, estimator: str, placement: str) -> torch.Tensor:
    """∇θ of the expected KL term of a trainer with π = softmax(θ), samples drawn from π (held fixed)."""
    theta = torch.randn(len(q), generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    weight = logp.exp().detach()  # sampling probabilities: no gradient flows through the sampling
    k = kl_estimate(logp, q.log(), estimator)
    if placement == "reward":  # a score-function term: penalty held fixed, times ∇log π
        surrogate = (weight * k.detach() * logp).sum()
    elif placement == "loss×ratio":  # TRL's use_bias_correction_kl: k times π/π_old (value 1, gradient not 0)
        surrogate = (weight * torch.exp(logp - logp.detach()) * k).sum()
    else:  # in the loss: differentiated directly
        surrogate = (weight * k).sum()
    (grad,) = torch.autograd.grad(surrogate, theta)
    return theta.detach(), grad


def kl_gradient(theta: torch.Tensor, q: torch.Tensor, reverse: bool) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    kl = (q * (q.log() - logp)).sum() if reverse else (logp.exp() * (logp - q.log())).sum()
    return torch.autograd.grad(kl, theta)[0]


def test_which_kl_each_placement_optimises(categoricals):
    _, q = categoricals
    theta, g = surrogate_gradients(q, "k1", "reward")
    assert torch.allclose(g, kl_gradient(theta, q, reverse=False), atol=1e-6)  # KL(π‖π_ref): exact
    theta, g = surrogate_gradients(q, "k3", "loss")
    assert torch.allclose(g, kl_gradient(theta, q, reverse=True), atol=1e-6)  # KL(π_ref‖π): GRPO's
    theta, g = surrogate_gradients(q, "k2", "loss")
    assert torch.allclose(g, kl_gradient(theta, q, reverse=False), atol=1e-6)  # KL(π‖π_ref) for one token
    theta, g = surrogate_gradients(q, "k3", "loss×ratio")
    assert torch.allclose(g, kl_gradient(theta, q, reverse=False), atol=1e-6)  # TRL 1.16's GRPO default
    _, g = surrogate_gradients(q, "k1", "loss")
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-6)  # no regularisation at all
    theta, g = surrogate_gradients(q, "k3", "reward")
    assert not torch.allclose(g, kl_gradient(theta, q, reverse=False), atol=1e-3)  # not the KL's gradient


def test_group_baselines_and_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])  # two groups of three
    assert torch.allclose(group_baseline(r, 3, "rloo"), torch.tensor([2.5, 2.0, 1.5, 0.0, 3.0, 3.0]))
    assert torch.allclose(group_baseline(r, 3, "mean"), torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0, 2.0]))
    assert torch.allclose(group_advantages(r, 3, "none"), torch.tensor([-1.0, 0.0, 1.0, 4.0, -2.0, -2.0]))
    group = group_advantages(r, 3, "group", eps=0)
    assert torch.allclose(group.view(2, 3).std(1), torch.ones(2))
    assert torch.allclose(group_advantages(r, 3, "batch", eps=0), group_advantages(r, 3, "none") / r.std())


def test_whiten_and_masked_mean_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(x, mask) == 2.5
    w = whiten(x, mask)
    assert w[:, 2].abs().sum() == 0
    assert abs(masked_mean(w, mask)) < 1e-6 and abs(masked_mean(w**2, mask) - 1) < 1e-5


def test_clipped_losses():
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]]))  # ratios 1.5, 1, 0.5
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = clipped_policy_loss(logp, logp_old, adv, torch.ones(1, 3), clip=0.2)
    # min(ρA, clip(ρ)A): 1.2, 1.0, −0.8 (the clipped term for ρ = 0.5, A < 0)
    assert torch.allclose(loss, torch.tensor(-(1.2 + 1.0 - 0.8) / 3))
    assert torch.allclose(stats["clip_frac"], torch.tensor(2 / 3))
    v_old, ret, v = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 1.0]])
    assert torch.allclose(clipped_value_loss(v, v_old, ret, torch.ones(1, 2), clip=0), torch.tensor(0.0625))
    # clipped to ±0.2 around v_old: (0.2 − 1)² is the larger error for both entries
    assert torch.allclose(clipped_value_loss(v, v_old, ret, torch.ones(1, 2), clip=0.2), torch.tensor(0.32))


def test_explained_variance_and_kl_controller():
    target, mask = torch.randn(3, 4), torch.ones(3, 4)
    assert torch.allclose(explained_variance(target, target, mask), torch.tensor(1.0))
    assert explained_variance(torch.zeros(3, 4) + target.mean(), target, mask).abs() < 1e-5
    assert adaptive_kl_coef(0.1, kl=10.0, target=1.0, horizon=100, n=10) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, kl=0.5, target=1.0, horizon=100, n=10) == pytest.approx(0.1 * 0.98)


def test_annealed_alpha_falls_geometrically_then_holds():
    steps = [annealed_alpha(t, 100, alpha=0.5, start=4.0, anneal=0.5) for t in range(100)]
    assert steps[0] == 4.0 and steps[25] == pytest.approx((4.0 * 0.5) ** 0.5)  # halfway: the geometric mean
    assert steps[50:] == [0.5] * 50
    assert all(steps[t + 1] / steps[t] == pytest.approx(0.125 ** (1 / 50)) for t in range(49))
    assert {annealed_alpha(t, 100, alpha=0.5, start=0.0, anneal=0.5) for t in range(100)} == {0.5}


def test_prefix_baseline_is_leave_one_out_among_shared_prefixes():
    from rlcircuits.trainers.rl_math import prefix_baseline

    tokens = torch.tensor([[3, 5], [3, 6], [4, 5], [3, 5]])  # one group of 4
    returns = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    b = prefix_baseline(returns, tokens, 4)
    # t = 0: every row shares the empty prefix → leave-one-out over the group
    assert torch.allclose(b[:, 0], torch.tensor([3.0, 8 / 3, 7 / 3, 2.0]))
    # t = 1: rows 0, 1, 3 share prefix "3"; row 2 is alone → leave-one-out over the whole group
    assert torch.allclose(b[:, 1], torch.tensor([30.0, 25.0, 70 / 3, 15.0]))


def test_full_kl_is_the_categorical_kl(categoricals):
    p, q = categoricals
    exact = torch.distributions.kl_divergence(torch.distributions.Categorical(p), torch.distributions.Categorical(q))
    assert torch.allclose(full_kl(p.log()[None, None], q.log()[None, None]), exact.reshape(1, 1), atol=1e-6)


def enumerated_sequences(vocab: int, length: int, eos: int):
    """Every completion of at most ``length`` tokens that stops at ``eos``: ids, mask ``[N, length]``."""
    bits = [v for v in range(vocab) if v != eos]
    rows = [list(body) + [eos] * (length - n) for n in range(length) for body in itertools.product(bits, repeat=n)]
    rows += [list(body) for body in itertools.product(bits, repeat=length)]  # truncated, no <eos>
    ids = torch.tensor(rows)
    first_eos = torch.where(ids == eos, torch.arange(length), length).amin(-1)
    return ids, (torch.arange(length)[None] <= first_eos[:, None]).float()


def tabular_dists(theta: torch.Tensor, ids: torch.Tensor, keys: dict) -> torch.Tensor:
    """log π(·|y_<t) ``[N, T, V]`` of a policy with one logit row ``theta[k]`` per prefix."""
    rows = [[keys[tuple(seq[:t])] for t in range(ids.shape[1])] for seq in ids.tolist()]
    return torch.log_softmax(theta[torch.tensor(rows)], -1)


def tabular_problem(seed: int):
    """A tabular policy (logits θ, with grad) and reference over every completion of ≤ 3 tokens of a 3-token
    vocabulary, and a random reward per sequence: ids, mask, prefix keys, θ, π_ref's log-dists, rewards."""
    vocab, length, eos = 3, 3, 2
    ids, mask = enumerated_sequences(vocab, length, eos)
    keys = {prefix: i for i, prefix in enumerate({tuple(s[:t]) for s in ids.tolist() for t in range(length)})}
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(len(keys), vocab, generator=g).requires_grad_(True)
    dist_ref = tabular_dists(torch.randn(len(keys), vocab, generator=g), ids, keys)
    return ids, mask, keys, theta, dist_ref, torch.randn(len(ids), generator=g)


@pytest.mark.parametrize("kl", ["k1", "full"])
def test_reinforce_surrogate_gradient_is_the_exact_gradient(kl):
    """Summed over every sequence with its probability as weight, REINFORCE's surrogate (as the trainer builds
    it from kl_returns and full_kl) has exactly the gradient of E[r] − α·KL(π‖π_ref): both KL forms."""
    alpha = 0.7
    ids, mask, keys, theta, dist_ref, reward = tabular_problem(seed=0)

    def token_logp(dist):
        return dist.gather(-1, ids[..., None]).squeeze(-1) * mask  # [N, T]

    dist = tabular_dists(theta, ids, keys)
    logp, logp_ref = token_logp(dist), token_logp(dist_ref)
    seq_p = logp.sum(-1).exp()
    assert torch.allclose(seq_p.sum(), torch.tensor(1.0))  # the enumeration covers the sequence space
    exact = (seq_p * (reward - alpha * (logp - logp_ref).sum(-1))).sum()  # J(θ)
    (want,) = torch.autograd.grad(exact, theta)

    def surrogate_grad(own: bool) -> torch.Tensor:
        dist = tabular_dists(theta, ids, keys)
        logp = token_logp(dist)
        kl_tok = (full_kl(dist, dist_ref) if kl == "full" else logp.detach() - logp_ref) * mask
        to_go = kl_returns(reward, kl_tok.detach(), mask, alpha, own=own)
        loss = -(to_go * logp).sum(-1) + (alpha * kl_tok.sum(-1) if kl == "full" else 0)
        return -torch.autograd.grad((seq_p.detach() * loss).sum(), theta)[0]

    assert torch.allclose(surrogate_grad(own=kl == "k1"), want, atol=1e-5)  # the flag reinforce.py passes
    if kl == "k1":  # without its own position's score term, k1 loses that position's KL gradient
        assert not torch.allclose(surrogate_grad(own=False), want, atol=1e-3)
    else:  # full_kl_t depends on y_<t only, so its score term has mean 0 either way: own=False drops its noise
        assert torch.allclose(surrogate_grad(own=True), want, atol=1e-5)


def test_dpg_surrogate_gradient_is_minus_the_forward_kl_gradient():
    """DPG's weights (as reinforce.py builds them from the KL-shaped return) are π*/π for π* ∝ π_ref·e^{r/α},
    average to 1 under π, and weighting each sequence's log-probability by them has the gradient of
    −KL(π*‖π) — exactly, when the batch is the enumerated space weighted by π."""
    alpha = 0.7
    ids, mask, keys, theta, dist_ref, reward = tabular_problem(seed=1)

    def seq_logp(dist):
        return (dist.gather(-1, ids[..., None]).squeeze(-1) * mask).sum(-1)  # [N]

    logp_ref = seq_logp(dist_ref)
    log_star = torch.log_softmax(logp_ref + reward / alpha, 0)  # π*, normalised over the whole space
    logp = seq_logp(tabular_dists(theta, ids, keys))
    (want,) = torch.autograd.grad(-(log_star.exp() * (log_star - logp)).sum(), theta, retain_graph=True)

    k1 = ((logp.detach() - logp_ref) / mask.sum(-1))[:, None] * mask  # any split over the tokens will do
    to_go = kl_returns(reward, k1, mask, alpha, own=True)
    weights = dpg_weights(to_go[:, 0], alpha, log_p=logp.detach())
    assert torch.allclose(weights, (log_star - logp).exp().detach(), rtol=1e-5)
    assert torch.allclose((logp.exp() * weights).sum(), torch.tensor(1.0))
    (got,) = torch.autograd.grad((logp.detach().exp() * weights * logp).sum(), theta)
    assert torch.allclose(got, want, atol=1e-6) and want.abs().max() > 0.01
    returns = torch.tensor([[0.0, 0.7, -1.4], [2.0, 2.5, 1.0]])  # two prompts' samples from π, equally weighted
    assert torch.allclose(dpg_weights(returns, alpha), 3 * torch.softmax(returns / alpha, -1))  # each its own Z
