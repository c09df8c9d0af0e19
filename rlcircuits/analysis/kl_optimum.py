"""The exact KL-regularised optimum of the toy study, and how far a trained policy is from it.

For the objective E_π[r] − α·KL(π‖π_base) the maximiser is π*(y) ∝ π_base(y)·exp(r(y)/α). Three
versions of its branch marginals are computed, each independently:
- ``optimal``: under the *trained* base, by enumerating every well-formed sequence in batches. Malformed
  sequences all earn the same ``invalid_reward``, so their total weight is exact too: it is the base's
  mass outside the well-formed space (reported) times exp(invalid_reward/α).
- ``closed_form``: under a *perfect* base (the data distribution): ∝ p_b · E_data[exp(r/α) | b].
- ``policy`` and ``base``: shares of ``n_samples`` sequences sampled from each checkpoint.
- ``branches_only``: the best policy that only moves mass between the base's branches, keeping each one's
  continuations (∝ P_b·exp(E_base[r | b]/α)). A policy near it and far from ``optimal`` has learned nothing
  inside the branches: where RL stalls on the parity rewards (docs/toy_kl.md, "Why parity stalls").
- ``reweighted``: the same with the *policy's* continuations: the best branch shares for what it learned inside
  the branches, ∝ π*_b·exp(−KL(π(·|b)‖π*(·|b))). ``tv_policy_reweighted`` is then the miss of RL's branch
  weights and ``tv_reweighted_optimal`` the miss its continuations force (the two bound ``tv_policy_optimal``).
``tv_policy_optimal`` is the total-variation distance between the policy's and the optimum's branch
distributions (the malformed share counted as one more outcome). Branch shares can agree while the bits
inside a branch do not, so the policy is also enumerated for its exact distances from π* over whole
sequences, malformed ones lumped into one outcome: ``tv_sequences_policy_optimal``, ``kl_policy_optimal`` =
KL(π‖π*), which is (J* − J(π))/α — the objective RL leaves on the table, in nats — and ``kl_optimal_policy``
= KL(π*‖π), the one ``trainer.objective=dpg`` minimises.

    python run.py experiment=toy_kl alpha=0.5
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from rlcircuits.analysis import ANALYSES
from rlcircuits.io import save_figure
from rlcircuits.models.softmax import log_softmax
from rlcircuits.registry import check
from rlcircuits.tasks.toy_abc import MALFORMED, ToyABC
from rlcircuits.trainers.rollout import sample

log = logging.getLogger(__name__)
STALLED = 0.05  # nats of excess loss above which a base's SFT has stalled (docs/toy_kl.md, "The base: SFT stalls")


@dataclass
class KLOptimumConfig:
    name: str = "kl_optimum"
    alpha: float = 0.1  # KL coefficient (the top-level `alpha`)
    n_samples: int = 16384  # sequences sampled from each checkpoint
    batch_size: int = 4096  # sequences per forward pass, for enumeration and sampling
    seed: int = 0  # sampling seed (the top-level `seed`)

    def __post_init__(self):
        check(self.alpha > 0, "alpha", f"{self.alpha} must be > 0 for the optimum to exist")
        check(self.n_samples >= 4096, "n_samples", f"{self.n_samples} < 4096 gives too noisy a share estimate")
        check(self.batch_size >= 1, "batch_size", "must be ≥ 1")

    def check_task(self, task_cls) -> None:
        check(issubclass(task_cls, ToyABC), "task", f"the exact optimum is enumerated for task=toy_abc, "
              f"not {task_cls.__name__}")


def sequence_logprobs(model, ids: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """log p(ids[:, 1:] | ids[:, :1]) for each row of ``ids [N, T]`` (row starts with <bos>), ``[N]``; in
    float64 for a float64 model, float32 otherwise; differentiable unless called under no_grad."""
    out = []
    for chunk in ids.split(batch_size):
        logits = model(chunk).logits[:, :-1]
        logp = log_softmax(logits if logits.dtype == torch.double else logits.float())  # [n, T-1, V]
        out.append(logp.gather(-1, chunk[:, 1:, None]).squeeze(-1).sum(-1))
    return torch.cat(out)


def tilted(logp: torch.Tensor, rewards: torch.Tensor, alpha: float, outside: float = 0.0,
           invalid_reward: float = 0.0) -> tuple[torch.Tensor, float]:
    """π ∝ p·exp(r/α) over enumerated sequences, from their ``logp [N]`` and ``rewards [N]``: its
    log-probabilities ``[N]`` (float64) and its mass outside them. ``outside`` is p's mass on sequences not
    enumerated, all of reward ``invalid_reward``."""
    logw = logp.double() + rewards.double() / alpha  # [N]
    terms = [logw]
    if outside > 0:
        terms.append(torch.tensor([math.log(outside) + invalid_reward / alpha], dtype=torch.double))
    log_z = torch.logsumexp(torch.cat(terms), 0)
    rest = math.exp(math.log(outside) + invalid_reward / alpha - log_z) if outside > 0 else 0.0
    return logw - log_z, rest


def branch_shares(logp: torch.Tensor, branches: list[str], names: list[str]) -> dict[str, float]:
    """Each branch's share of the enumerated sequences' mass ``exp(logp) [N]``, and the rest as ``malformed``."""
    idx = torch.tensor([names.index(b) for b in branches])
    shares = torch.zeros(len(names), dtype=torch.double).index_add_(0, idx, logp.double().exp())
    out = {n: float(s) for n, s in zip(names, shares)}
    out[MALFORMED] = max(0.0, 1.0 - sum(out.values()))
    return out


def tilted_branch_marginals(logp: torch.Tensor, rewards: torch.Tensor, branches: list[str], names: list[str],
                            alpha: float, outside: float = 0.0, invalid_reward: float = 0.0) -> dict[str, float]:
    """Branch marginals of π ∝ p·exp(r/α), from ``logp [N]`` and ``rewards [N]`` of enumerated sequences.

    ``outside`` is the reference's probability mass on sequences not enumerated, all of reward
    ``invalid_reward``; it becomes the ``malformed`` share.
    """
    return branch_shares(tilted(logp, rewards, alpha, outside, invalid_reward)[0], branches, names)


def sequence_tv(logp: torch.Tensor, rest_p: float, logq: torch.Tensor, rest_q: float) -> float:
    """Total variation between two distributions over the enumerated sequences (``logp``, ``logq [N]``) plus
    the rest of the space as one outcome of mass ``rest_p`` / ``rest_q``."""
    return 0.5 * (float((logp.double().exp() - logq.double().exp()).abs().sum()) + abs(rest_p - rest_q))


def sequence_kl(logp: torch.Tensor, rest_p: float, logq: torch.Tensor, rest_q: float) -> float:
    """KL(p‖q) in nats over the enumerated sequences (``logp``, ``logq [N]``) plus the rest of the space as one
    outcome of mass ``rest_p`` / ``rest_q``; infinite where q misses mass p has."""
    p = logp.double().exp()
    kl = float((p * (logp.double() - logq.double())).sum())
    if rest_p > 0:
        kl += rest_p * (math.log(rest_p) - math.log(rest_q)) if rest_q > 0 else math.inf
    return kl


def reweighted_branch_marginals(logp: torch.Tensor, rewards: torch.Tensor, branches: list[str], names: list[str],
                                alpha: float, outside: float = 0.0, invalid_reward: float = 0.0,
                                policy_logp: torch.Tensor | None = None) -> dict[str, float]:
    """Branch marginals of the best policy that only reweights branches, each keeping fixed continuations:
    the reference p's (``logp``), or a policy π's (``policy_logp [N]``). π'(b, y) = w_b·π(y | b) maximises
    Σ_b w_b·V_b − α·KL(w‖P) at w_b ∝ P_b·exp(V_b/α), P_b the reference's mass on branch b and
    V_b = E_π[r | b] − α·KL(π(·|b)‖p(·|b)) the branch's value. Equivalently w_b ∝ π*_b·exp(−KL(π(·|b)‖π*(·|b))):
    π*'s share, discounted by how far the continuations are from π*'s. Other inputs as in
    ``tilted_branch_marginals``; the malformed outcome (mass ``outside``, reward ``invalid_reward``) is one
    more branch. With the reference's own continuations (V_b = E_p[r | b]) a policy at these shares has moved
    mass between branches but learned nothing inside them; with a policy's, they are the best its
    continuations allow, so a miss of π*'s shares splits into the branch weights' and the continuations'.
    """
    idx = torch.tensor([names.index(b) for b in branches])

    def per_branch(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(names), dtype=torch.double).index_add_(0, idx, x)

    log_p, log_q = logp.double(), (logp if policy_logp is None else policy_logp).double()
    p, q = log_p.exp(), log_q.exp()
    mass, q_mass = per_branch(p), per_branch(q)  # P_b, and π's mass on b
    kl = per_branch(torch.where(q > 0, q * (log_q - log_p), 0.0)) / q_mass - (q_mass / mass).log()  # KL(π(·|b)‖p(·|b))
    value = per_branch(q * rewards.double()) / q_mass - alpha * kl  # V_b; −∞ where π has mass p lacks
    value = torch.where(mass > 0, value, 0.0)  # a branch the reference never takes keeps weight 0
    return tilted_branch_marginals(mass.log(), value, names, names, alpha, outside, invalid_reward)  # one "sequence" per branch


def enumerate_well_formed(model, task: ToyABC, batch_size: int = 4096):
    """Every well-formed sequence's log-probability under ``model`` (float64, ``[N]``), its branch, its reward
    (``[N]``), and the mass ``model`` puts outside them (on malformed sequences)."""
    ids, branches, rewards = task.well_formed()
    with torch.no_grad():
        logp = sequence_logprobs(model, ids.to(next(model.parameters()).device), batch_size).cpu().double()
    outside = max(0.0, 1.0 - float(torch.exp(torch.logsumexp(logp, 0))))
    return logp, branches, torch.tensor(rewards), outside


def excess_loss(task: ToyABC, logp: torch.Tensor, branches: list[str]) -> float:
    """KL(data‖model) in nats per sequence (0 for a perfect model), from ``enumerate_well_formed``'s ``logp``
    and ``branches``."""
    p_data = torch.tensor([task.cfg.branches[b].prob * task.bits_distribution(b).get(bits, 0.0)
                           for b, bits in zip(branches, task.well_formed_bits())], dtype=torch.double)
    seen = p_data > 0
    return float((p_data[seen] * (p_data[seen].log() - logp[seen])).sum())


def exact_optimum(base, task: ToyABC, alpha: float, batch_size: int = 4096) -> tuple[dict[str, float], float, float]:
    """π* branch marginals under ``base`` by enumerating the well-formed space, the base's probability of
    malformed sequences, and its exact excess loss KL(data‖base) in nats per sequence (0 for a perfect
    base)."""
    logp, branches, rewards, outside = enumerate_well_formed(base, task, batch_size)
    marg = tilted_branch_marginals(logp, rewards, branches, task.branches, alpha, outside, task.cfg.invalid_reward)
    return marg, outside, excess_loss(task, logp, branches)


class ExactObjective:
    """J(π) = E_π[r] − α·KL(π‖π_base), exactly: in float64, summed over every well-formed sequence plus one
    lumped malformed outcome M (reward ``invalid_reward``) — the objective RL estimates from samples.

    Its maximum is J* = α·log Z, at π*, and J* − J(π) = α·KL(π‖π*), so J measures the distance to the
    optimum, up to the KL inside M (mass ~1e-3 for a trained base). The benchmarks use it to trace RL
    along training and to maximise J within the architecture.
    """

    def __init__(self, task: ToyABC, base, alpha: float):
        self.ids, self.branch_of, rewards = task.well_formed()  # [N, T], and each row's branch name
        self.alpha, self.names = alpha, list(task.branches)
        self.branch = torch.tensor([self.names.index(b) for b in self.branch_of])  # [N]
        self.r, self.r_m = torch.tensor(rewards, dtype=torch.double), float(task.cfg.invalid_reward)
        with torch.no_grad():
            self.lb = sequence_logprobs(copy.deepcopy(base).cpu().double(), self.ids)  # [N] log π_base
        self.m_base = max(float(1 - self.lb.exp().sum()), 1e-300)
        log_z = torch.logsumexp(torch.cat([self.lb + self.r / alpha,
                                           torch.tensor([math.log(self.m_base) + self.r_m / alpha])]), 0)
        self.j_star = float(alpha * log_z)
        self.log_optimum = self.lb + self.r / alpha - log_z  # [N] log π*
        self.optimum = self.shares(self.log_optimum)  # π*'s branch and malformed shares

    def value(self, lp: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        """J of the policy whose well-formed sequences have log-probabilities ``lp [N]`` (differentiable);
        ``alpha`` another KL coefficient than the objective's (an annealing trainer's of the moment)."""
        alpha = self.alpha if alpha is None else alpha
        p = lp.exp()
        m = (1 - p.sum()).clamp(min=1e-300)
        return ((p * (self.r - alpha * (lp - self.lb))).sum()
                + m * (self.r_m - alpha * (m.log() - math.log(self.m_base))))

    def shares(self, lp: torch.Tensor) -> dict[str, float]:
        """Branch shares and the malformed share of the policy with log-probabilities ``lp [N]``."""
        s = torch.zeros(len(self.names), dtype=torch.double).index_add_(0, self.branch, lp.detach().exp())
        out = dict(zip(self.names, s.tolist()))
        return out | {MALFORMED: max(0.0, 1 - sum(out.values()))}

    @torch.no_grad()
    def report(self, model) -> dict:
        """``model``'s J, E[r], KL to the base and to π*, TV to π*'s branch shares and its two parts (as
        ``tv_policy_reweighted`` and ``tv_reweighted_optimal`` in results.json), and its shares."""
        lp = sequence_logprobs(copy.deepcopy(model).cpu().double(), self.ids)
        p, shares = lp.exp(), self.shares(lp)
        j, reward = float(self.value(lp)), float((p * self.r).sum()) + shares[MALFORMED] * self.r_m
        reweighted = reweighted_branch_marginals(self.lb, self.r, self.branch_of, self.names, self.alpha,
                                                 self.m_base, self.r_m, lp)
        return {"J": j, "reward": reward, "kl_base": (reward - j) / self.alpha,
                "kl_optimum": (self.j_star - j) / self.alpha, "tv": total_variation(shares, self.optimum),
                "tv_weights": total_variation(shares, reweighted),
                "tv_continuations": total_variation(reweighted, self.optimum), "shares": shares}


def closed_form(task: ToyABC, alpha: float) -> dict[str, float]:
    """π* branch marginals for a perfect base: ∝ p_b · Σ_bits P_data(bits | b)·exp(r(bits)/α)."""
    log_w = {}
    for name, b in task.cfg.branches.items():
        terms = [math.log(p) + task.reward_fn(bits) / alpha for bits, p in task.bits_distribution(name).items() if p > 0]
        log_w[name] = math.log(b.prob) + float(torch.logsumexp(torch.tensor(terms, dtype=torch.double), 0)) if b.prob > 0 else -math.inf
    log_z = float(torch.logsumexp(torch.tensor(list(log_w.values()), dtype=torch.double), 0))
    return {n: math.exp(w - log_z) for n, w in log_w.items()} | {MALFORMED: 0.0}


def sampled_shares(model, task: ToyABC, n: int, seed: int, batch_size: int = 4096) -> dict[str, float]:
    """Share of each branch (and of malformed sequences) among ``n`` samples from ``model``."""
    torch.manual_seed(seed)
    counts: Counter[str] = Counter()
    prompt = task.examples("train", 1, seed)[0]
    for start in range(0, n, batch_size):
        rollout = sample(model, [prompt] * min(batch_size, n - start), task.tokenizer, task.max_new_tokens)
        counts.update(task.parse(c)[0] for c in rollout.completions)
    return {name: counts[name] / n for name in [*task.branches, MALFORMED]}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def plot_distributions(dists: dict[str, dict[str, float]], names: list[str], alpha: float, path: Path):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(dists)
    x = np.arange(len(names))
    for i, (label, d) in enumerate(dists.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [d[n] for n in names], width, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("probability")
    ax.set_title(f"branch distribution, α = {alpha:g}")
    ax.legend()
    save_figure(fig, path)


@ANALYSES.register("kl_optimum", schema=KLOptimumConfig)
def run(cfg: KLOptimumConfig, task: ToyABC, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    check(isinstance(task, ToyABC), "analysis", "kl_optimum needs task=toy_abc (an enumerable sequence space)")
    base = AutoModelForCausalLM.from_pretrained(checkpoints["base"]).eval()
    policy = AutoModelForCausalLM.from_pretrained(checkpoints["policy"]).eval()
    logp, branches, rewards, outside = enumerate_well_formed(base, task, cfg.batch_size)  # under the base, once
    log_optimal, optimal_outside = tilted(logp, rewards, cfg.alpha, outside, task.cfg.invalid_reward)
    optimal = branch_shares(log_optimal, branches, task.branches)
    policy_logp, _, _, policy_outside = enumerate_well_formed(policy, task, cfg.batch_size)
    dists = {
        "base": sampled_shares(base, task, cfg.n_samples, cfg.seed, cfg.batch_size),
        "policy": sampled_shares(policy, task, cfg.n_samples, cfg.seed + 1, cfg.batch_size),
        "optimal": optimal,
        "closed_form": closed_form(task, cfg.alpha),
        "branches_only": reweighted_branch_marginals(logp, rewards, branches, task.branches, cfg.alpha, outside,
                                                     task.cfg.invalid_reward),
        "reweighted": reweighted_branch_marginals(logp, rewards, branches, task.branches, cfg.alpha, outside,
                                                  task.cfg.invalid_reward, policy_logp),
    }
    names = task.branches
    plot_distributions(dists, names, cfg.alpha, out_dir / "plots" / "branch_distribution.png")
    excess, tv_closed_form = excess_loss(task, logp, branches), total_variation(optimal, dists["closed_form"])
    if excess > STALLED:
        log.warning("the base is %.3f nats per sequence above the data's entropy: its SFT stalled or was cut "
                    "short, so its optimum is not the perfect base's (TV %.3f from the closed form). Another "
                    "seed or more base.trainer.steps usually trains it (docs/toy_kl.md, 'The base: SFT stalls')",
                    excess, tv_closed_form)
    return {
        "alpha": cfg.alpha,
        "branches": names,
        "distribution": {k: {n: d[n] for n in names} for k, d in dists.items()},
        "malformed": {k: d[MALFORMED] for k, d in dists.items()},
        "mass_outside_enumeration": outside,
        "base_excess_loss": excess,
        "tv_policy_optimal": total_variation(dists["policy"], optimal),
        "tv_base_data": total_variation(dists["base"], {n: task.cfg.branches[n].prob for n in names}),
        "tv_optimal_closed_form": tv_closed_form,
        "tv_policy_branches_only": total_variation(dists["policy"], dists["branches_only"]),
        "tv_policy_reweighted": total_variation(dists["policy"], dists["reweighted"]),
        "tv_reweighted_optimal": total_variation(dists["reweighted"], optimal),
        "tv_sequences_policy_optimal": sequence_tv(policy_logp, policy_outside, log_optimal, optimal_outside),
        "kl_policy_optimal": sequence_kl(policy_logp, policy_outside, log_optimal, optimal_outside),
        "kl_optimal_policy": sequence_kl(log_optimal, optimal_outside, policy_logp, policy_outside),
    }


def plot_sweep(rows: list[dict], out_dir: Path) -> None:
    """The study's headline figure: branch shares against α — the RL policy (per trainer, mean ± sd over
    seeds), the exact optimum under each trained base (mean over seeds) and the perfect-base closed form
    (a curve, from the first job's task config)."""
    from omegaconf import OmegaConf

    from rlcircuits.registry import validate
    from rlcircuits.tasks.toy_abc import ToyABCConfig

    task = ToyABC(validate(ToyABCConfig, OmegaConf.load(out_dir / rows[0]["job"] / ".hydra" / "config.yaml").task, "task"))
    alphas = sorted({float(r["alpha"]) for r in rows})
    grid = np.geomspace(alphas[0] / 1.5, alphas[-1] * 1.5, 60)
    curve = [closed_form(task, a) for a in grid]
    trainer = lambda r: r.get("override:trainer", "")  # noqa: E731
    fig, axes = plt.subplots(1, len(task.branches), figsize=(4 * len(task.branches), 3.5), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], task.branches):
        ax.plot(grid, [c[b] for c in curve], "k--", lw=1, label="closed form (perfect base)")
        optimal = [np.mean([r[f"distribution/optimal/{b}"] for r in rows if float(r["alpha"]) == a]) for a in alphas]
        ax.plot(alphas, optimal, "s", mfc="none", color="0.4", ms=9, label="exact optimum (trained base)")
        for name in sorted({trainer(r) for r in rows}):
            vals = {a: [r[f"distribution/policy/{b}"] for r in rows if trainer(r) == name and float(r["alpha"]) == a]
                    for a in alphas}
            xs = [a for a in alphas if vals[a]]
            ax.errorbar(xs, [np.mean(vals[a]) for a in xs], yerr=[np.std(vals[a]) for a in xs],
                        marker="o", ls="none", capsize=3, label=f"RL policy ({name})" if name else "RL policy")
        ax.set_xscale("log")
        ax.set_xlabel("α (KL coefficient)")
        ax.set_title(f"branch {b}")
    axes[0][0].set_ylabel("share of samples")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, out_dir / "branch_shares_vs_alpha.png")
