"""The exact optimum π* ∝ π_base·exp(r/α), checked against brute force and against closed forms."""

import itertools
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.analysis.kl_optimum import (
    ExactObjective,
    closed_form,
    enumerate_well_formed,
    exact_optimum,
    reweighted_branch_marginals,
    sequence_kl,
    sequence_logprobs,
    sequence_tv,
    tilted,
    tilted_branch_marginals,
    total_variation,
)
from rlcircuits.tasks.bit_rewards import ADDITIVE
from rlcircuits.tasks.toy_abc import MALFORMED, ToyABC


def random_model(task: ToyABC, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(task.tokenizer), n_positions=task.max_length, n_embd=8, n_layer=1, n_head=2,
                     initializer_range=0.5)
    return GPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def brute_force_marginals(model, task: ToyABC, alpha: float) -> dict[str, float]:
    """Every sequence over the whole vocabulary, its probability as a product of one-step conditionals."""
    bos = task.tokenizer.bos_token_id
    weights: dict[str, float] = {b: 0.0 for b in [*task.branches, MALFORMED]}
    for seq in itertools.product(range(len(task.tokenizer)), repeat=task.max_new_tokens):
        logp = 0.0
        for t, token in enumerate(seq):
            prefix = torch.tensor([[bos, *seq[:t]]])
            logp += torch.log_softmax(model(prefix).logits[0, -1].double(), -1)[token].item()
        branch, _ = task.parse(list(seq))
        (reward,) = task.rewards([], [list(seq)])
        weights[branch] += math.exp(logp + reward / alpha)
    z = sum(weights.values())
    return {k: w / z for k, w in weights.items()}


@pytest.mark.parametrize("reward,alpha", [("ones", 1.0), ("palindrome", 0.5)])
def test_enumeration_matches_brute_force(reward, alpha, make_toy):
    task = make_toy(n_bits=2, reward=reward, invalid_reward=0.5)
    model = random_model(task)
    enumerated, outside, _ = exact_optimum(model, task, alpha, batch_size=5)  # several batches
    brute = brute_force_marginals(model, task, alpha)
    assert outside > 0.1  # a random model puts real mass on malformed sequences: that path is exercised
    for k in brute:
        assert enumerated[k] == pytest.approx(brute[k], abs=1e-5)


def test_exact_objective_peaks_at_the_optimum_and_its_gap_is_alpha_times_kl(make_toy):
    """J(π*) = J*, J* − J(π) = α·KL(π‖π*) over the well-formed sequences and the lumped malformed outcome,
    J(base) = E_base[r], and π*'s shares are those ``exact_optimum`` enumerates separately."""
    task = make_toy(n_bits=2, reward="palindrome", invalid_reward=0.5)
    base, other, alpha = random_model(task, 0), random_model(task, 1), 0.7
    obj = ExactObjective(task, base, alpha)
    enumerated, _, _ = exact_optimum(base, task, alpha)
    for k, v in obj.optimum.items():
        assert v == pytest.approx(enumerated[k], abs=1e-5)
    assert float(obj.value(obj.log_optimum)) == pytest.approx(obj.j_star, rel=1e-7)
    with torch.no_grad():
        lp = sequence_logprobs(random_model(task, 1).double(), obj.ids)
    m, m_star = 1 - lp.exp().sum(), 1 - obj.log_optimum.exp().sum()
    kl = (lp.exp() * (lp - obj.log_optimum)).sum() + m * (m / m_star).log()  # KL(π‖π*), N + 1 outcomes
    report = obj.report(other)
    assert report["kl_optimum"] == pytest.approx(float(kl), rel=1e-6) and float(kl) > 0.01
    # what results.json reports, from kl_optimum's own functions: the same KL, and KL(π*‖π) the other way
    log_star, m_tilted = tilted(obj.lb, obj.r, alpha, obj.m_base, obj.r_m)
    assert torch.allclose(log_star, obj.log_optimum) and m_tilted == pytest.approx(float(m_star), rel=1e-9)
    assert sequence_kl(lp, float(m), log_star, m_tilted) == pytest.approx(float(kl), rel=1e-6)
    forward = (log_star.exp() * (log_star - lp)).sum() + m_star * (m_star / m).log()
    assert sequence_kl(log_star, m_tilted, lp, float(m)) == pytest.approx(float(forward), rel=1e-6)
    assert not math.isclose(float(forward), float(kl), rel_tol=0.01)  # the two directions differ
    tv = 0.5 * ((lp.exp() - log_star.exp()).abs().sum() + (m - m_star).abs())
    assert sequence_tv(lp, float(m), log_star, m_tilted) == pytest.approx(float(tv), rel=1e-6)
    assert float(tv) <= math.sqrt(float(kl) / 2)  # Pinsker: the bound docs/toy_kl.md quotes
    assert report["J"] == pytest.approx(report["reward"] - alpha * report["kl_base"])
    assert report["tv"] <= report["tv_weights"] + report["tv_continuations"] + 1e-12  # its two parts
    assert report["tv_continuations"] == pytest.approx(total_variation(reweighted_branch_marginals(
        obj.lb, obj.r, obj.branch_of, obj.names, alpha, obj.m_base, obj.r_m, lp), obj.optimum), abs=1e-12)
    assert obj.report(base)["kl_base"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_closed_form_matches_the_study_formula(alpha, make_toy):
    # e^{4/α} : e^{2/α} : ((1 + e^{1/α})/2)^6 for the default branches, n_bits 6, reward ones
    w = [math.exp(4 / alpha), math.exp(2 / alpha), ((1 + math.exp(1 / alpha)) / 2) ** 6]
    expected = dict(zip("ABC", [x / sum(w) for x in w]))
    got = closed_form(make_toy(), alpha)
    assert got[MALFORMED] == 0
    for b in "ABC":
        assert got[b] == pytest.approx(expected[b], rel=1e-9)


def test_closed_form_headline_numbers_at_alpha_1(make_toy):
    got = closed_form(make_toy(), 1.0)
    assert [round(got[b], 2) for b in "ABC"] == [0.53, 0.07, 0.40]


@pytest.mark.parametrize("reward", sorted(ADDITIVE))
def test_closed_form_product_formula_for_additive_rewards(reward, make_toy):
    """For additive rewards and a biased coin, E[e^{r/α}] factorises over positions."""
    branches = {"X": {"prob": 0.2, "pattern": "10"}, "Y": {"prob": 0.8, "pattern": "random", "p_one": 0.3}}
    task = make_toy(branches=branches, n_bits=7, reward=reward)
    alpha, r = 0.7, ADDITIVE[reward]
    w_x = 0.2 * math.exp(sum(r[b] for b in "1010101") / alpha)
    w_y = 0.8 * (0.7 * math.exp(r["0"] / alpha) + 0.3 * math.exp(r["1"] / alpha)) ** 7
    got = closed_form(task, alpha)
    assert got["X"] == pytest.approx(w_x / (w_x + w_y), rel=1e-9)


def test_exact_optimum_of_a_perfect_base_is_the_closed_form(make_toy):
    """Feed the enumerator the data's own log-probabilities: both routes must agree to rounding."""
    task = make_toy(reward="same", n_bits=5)
    logp, branches, rewards = perfect_base_logp(task)
    for alpha in (0.3, 1.0, 3.0):
        got = tilted_branch_marginals(logp, rewards, branches, task.branches, alpha)
        assert total_variation(got, closed_form(task, alpha)) < 1e-9


def test_excess_loss_is_zero_only_for_the_data_distribution(make_toy):
    """Excess loss is KL(data‖model) ≥ 0; check it against a direct sum for a random model."""
    task = make_toy(n_bits=3)
    model = random_model(task)
    _, _, excess = exact_optimum(model, task, 1.0)
    ids, branches, _ = task.well_formed()
    with torch.no_grad():
        direct = 0.0
        for row, b, bits in zip(ids, branches, task.well_formed_bits()):
            p = task.cfg.branches[b].prob * task.bits_distribution(b).get(bits, 0.0)
            if p > 0:
                logq = torch.log_softmax(model(row[None]).logits[0, :-1].double(), -1).gather(-1, row[1:, None]).sum()
                direct += p * (math.log(p) - logq.item())
    assert excess == pytest.approx(direct, rel=1e-5) and excess > 0.5


def perfect_base_logp(task: ToyABC) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The data distribution's log-probability of every well-formed sequence, with branches and rewards."""
    ids, branches, rewards = task.well_formed()
    p = [task.cfg.branches[b].prob * task.bits_distribution(b).get(bits, 0.0)
         for b, bits in zip(branches, task.well_formed_bits())]
    return torch.tensor(p, dtype=torch.double).log(), branches, torch.tensor(rewards)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_branches_only_for_parity_leaves_the_coin_branch_at_its_mean_reward(alpha, make_toy):
    """``even`` on the default branches: A (110110) and B (001001) always earn 1, C's fair bits earn 1 half the
    time, so reweighting branches alone gives e^{1/α} : e^{1/α} : e^{1/(2α)} — less C than π*, whose C tilts
    its bits toward even parity (∝ (e^{1/α} + 1)/2)."""
    task = make_toy(reward="even")
    logp, branches, rewards = perfect_base_logp(task)
    got = reweighted_branch_marginals(logp, rewards, branches, task.branches, alpha)
    w = [math.exp(1 / alpha), math.exp(1 / alpha), math.exp(0.5 / alpha)]
    for name, x in zip("ABC", w):
        assert got[name] == pytest.approx(x / sum(w), rel=1e-9)
    assert got[MALFORMED] == pytest.approx(0, abs=1e-12)
    assert closed_form(task, alpha)["C"] > got["C"] + 0.02


def test_branches_only_gives_a_branch_without_mass_no_weight(make_toy):
    task = make_toy(branches={"A": {"prob": 1.0, "pattern": "10"}, "B": {"prob": 0.0, "pattern": "1"}}, n_bits=3)
    logp, branches, rewards = perfect_base_logp(task)
    assert reweighted_branch_marginals(logp, rewards, branches, task.branches, 1.0) == pytest.approx(
        {"A": 1.0, "B": 0.0, MALFORMED: 0.0})


def test_branches_only_is_the_optimum_when_every_branch_is_deterministic(make_toy):
    """With no randomness inside a branch there is nothing to tilt there: both computations must agree."""
    task = make_toy(n_bits=3, reward="palindrome", invalid_reward=0.5,
                    branches={"A": {"prob": 0.5, "pattern": "1"}, "B": {"prob": 0.5, "pattern": "10"}})
    logp, branches, rewards = perfect_base_logp(task)
    assert int(torch.isfinite(logp).sum()) == 2  # one sequence per branch
    for alpha in (0.3, 1.0):
        assert total_variation(reweighted_branch_marginals(logp, rewards, branches, task.branches, alpha),
                               tilted_branch_marginals(logp, rewards, branches, task.branches, alpha)) < 1e-12


@pytest.mark.parametrize("reward,alpha", [("palindrome", 0.5), ("ones", 1.0)])
def test_reweighting_a_policys_branches_maximises_the_objective(reward, alpha, make_toy):
    """With a policy's continuations fixed, the branch weights that maximise J — found here by L-BFGS on J summed
    over every sequence, a second implementation — are π*_b·exp(−KL(π(·|b)‖π*(·|b))) normalised, a third; and a
    policy with π*'s continuations is reweighted to π*'s shares."""
    task = make_toy(n_bits=3, reward=reward, invalid_reward=0.5)
    logp, branches, rewards, outside = enumerate_well_formed(random_model(task, 0), task)
    policy_logp, *_ = enumerate_well_formed(random_model(task, 1), task)
    got = reweighted_branch_marginals(logp, rewards, branches, task.branches, alpha, outside, 0.5, policy_logp)

    names = [*task.branches, MALFORMED]
    idx = torch.tensor([names.index(b) for b in branches])
    log_mass = torch.stack([torch.logsumexp(policy_logp[idx == k], 0) for k in range(len(task.branches))])
    conditional = policy_logp - log_mass[idx]  # log π(y | b)
    theta = torch.zeros(len(names), dtype=torch.double, requires_grad=True)

    def minus_j():
        log_w = torch.log_softmax(theta, 0)
        lq, m = log_w[idx] + conditional, log_w[-1].exp()
        return -((lq.exp() * (rewards - alpha * (lq - logp))).sum() + m * (0.5 - alpha * (log_w[-1] - math.log(outside))))

    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = minus_j()
        loss.backward()
        return loss

    opt.step(closure)
    ascent = dict(zip(names, torch.softmax(theta.detach(), 0).tolist()))
    assert got == pytest.approx(ascent, abs=1e-6)

    log_optimal, rest = tilted(logp, rewards, alpha, outside, 0.5)
    optimal = tilted_branch_marginals(logp, rewards, branches, task.branches, alpha, outside, 0.5)
    discounted = {MALFORMED: rest}
    for k, name in enumerate(task.branches):
        own = idx == k
        cond_opt = log_optimal[own] - torch.logsumexp(log_optimal[own], 0)
        discounted[name] = optimal[name] * math.exp(-sequence_kl(conditional[own], 0.0, cond_opt, 0.0))
    z = sum(discounted.values())
    assert got == pytest.approx({k: v / z for k, v in discounted.items()}, abs=1e-9)
    assert total_variation(got, optimal) > 0.01  # a random policy's continuations do cost it: the test has teeth
    assert reweighted_branch_marginals(logp, rewards, branches, task.branches, alpha, outside, 0.5,
                                       log_optimal) == pytest.approx(optimal, abs=1e-9)
