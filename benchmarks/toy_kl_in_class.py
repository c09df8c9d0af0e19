"""Is a toy_kl miss the trainer's or the model's? The best policy the architecture reaches on the exact objective.

    python benchmarks/toy_kl_in_class.py outputs/<date>/<time> [--steps 3000] [--natural 40] [--hessian] [--exact-trainer]
        [--homotopy 4]

Takes a finished toy_kl run (its config in ``.hydra/config.yaml``, its base and policy checkpoints) and
maximises J(θ) = E_πθ[r] − α·KL(πθ‖π_base) with no sampling: a sum over every well-formed sequence plus one
lumped malformed outcome, in float64, by full-batch Adam (cosine decay) and then L-BFGS, from the base and
from the RL policy (``--homotopy A``: also from the base along KL coefficients falling from A to the run's α;
``--natural N``: also N exact natural-gradient steps from the RL policy, the Fisher
enumerated too; ``--exact-trainer``: also the run's RL recipe from the base with the exact gradient in place of
the sampled one; ``--hessian``: also the exact Hessian's extreme eigenvalues on L-BFGS's way from the RL
policy onto the stationary point near it, to tell a flat saddle from a local maximum). Since
J(θ) = J* − α·KL(πθ‖π*), the gap to J* is the distance to the optimum. Every iterate is a policy of the
architecture, so the best one found bounds from below what the architecture can reach: if it lands within
TV 0.03 of π* and the RL policy does not, the miss is the trainer's. If it misses too, that proves nothing:
the search is local, and RL with a larger step and more samples has beaten it (docs/toy_kl.md, *Whose miss
is it?*). The Adam stage is printed on its own, to show what L-BFGS's curvature adds. No library does this
optimisation on an enumerated objective, hence this script.
"""

import argparse
import copy
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.func import functional_call, jacrev
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from rlcircuits.analysis.kl_optimum import ExactObjective, sequence_kl, sequence_logprobs
from rlcircuits.pipeline import build_spec, load_results
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.toy_abc import MALFORMED
from rlcircuits.trainers.common import backtrack, clip_and_step, optimizer_and_schedule
from rlcircuits.trainers.rl_math import annealed_alpha


def lbfgs_on(obj: ExactObjective, model, max_iter: int, tolerance_grad: float):
    """A call that takes one L-BFGS step (up to ``max_iter`` iterations, strong-Wolfe line search) on −J
    for ``model``'s parameters; repeated calls share the optimiser's curvature history."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=max_iter, history_size=50, tolerance_grad=tolerance_grad,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -obj.value(sequence_logprobs(model, obj.ids))
        loss.backward()
        return loss

    return lambda: opt.step(closure)


def adam(obj: ExactObjective, init, steps: int, lr: float):
    """Full-batch Adam with cosine decay on −J in float64; returns a copy of ``init`` at its best iterate."""
    model = copy.deepcopy(init).double().train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    best = (-math.inf, None)
    for _ in tqdm(range(steps), desc="exact Adam", leave=False):
        j = obj.value(sequence_logprobs(model, obj.ids))
        if j.item() > best[0]:
            best = (j.item(), copy.deepcopy(model.state_dict()))
        opt.zero_grad()
        (-j).backward()
        opt.step()
        sched.step()
    model.load_state_dict(best[1])
    return model.eval()


def polish(obj: ExactObjective, init):
    """L-BFGS from ``init`` (a copy) until J stops rising, never keeping a worse point; returns the model."""
    model = copy.deepcopy(init).train().requires_grad_(True)
    lbfgs = lbfgs_on(obj, model, max_iter=300, tolerance_grad=1e-12)
    for _ in range(10):
        before, state = obj.report(model)["J"], copy.deepcopy(model.state_dict())
        lbfgs()
        after = obj.report(model)["J"]
        if not math.isfinite(after) or after < before:
            model.load_state_dict(state)
            break
        if after - before < 1e-7:
            break
    return model.eval()


def homotopy(task, base, alpha: float, start: float, steps: int, lr: float):
    """The in-class search along a ladder of KL coefficients: from the base, exact Adam then L-BFGS at
    ``start`` (rounded up to ``alpha`` times a power of √2), then at each α a factor √2 smaller down to
    ``alpha``, every stage warm-started from the last.
    At a large α π* is near the base and the search finds it; each rung moves π* a little, so the policy can
    follow it. Straight at a small α the same search can stop in another basin (docs/toy_kl.md, *Annealing α*).
    Returns the model at ``alpha``."""
    rungs = math.ceil(2 * math.log2(start / alpha))
    model = base
    for k in range(rungs + 1):
        obj = ExactObjective(task, base, alpha * 2 ** ((rungs - k) / 2))
        model = polish(obj, adam(obj, model, steps, lr))
    return model


def exact_trainer(obj: ExactObjective, init, cfg):
    """The run's own RL recipe (``cfg``: AdamW, warm-up and decay, clipping, ``max_kl`` line search, steps,
    REINFORCE's ``alpha_start`` anneal)
    driven by the exact gradient of J instead of a sampled one, the line search measuring the exact KL
    from the step's start; in float32 as the trainer. Where it reaches π* and RL does not, RL's miss is
    its sampling noise; where it misses too, it is the recipe's step sizes on this landscape."""
    model = copy.deepcopy(init).float().train().requires_grad_(True)
    opt, sched = optimizer_and_schedule(model.parameters(), cfg)

    def moved_from(lp0: torch.Tensor):
        """KL(π_0‖π) over the well-formed sequences plus the malformed lump, π being ``model`` now."""
        def moved() -> float:
            with torch.no_grad():
                lp = sequence_logprobs(model, obj.ids).double()
            return sequence_kl(lp0, malformed(lp0), lp, malformed(lp))
        return moved

    def malformed(lp: torch.Tensor) -> float:
        return max(float(1 - lp.exp().sum()), 1e-300)

    for step in tqdm(range(cfg.steps), desc="trainer on the exact gradient", leave=False):
        lp = sequence_logprobs(model, obj.ids).double()
        before = [q.detach().clone() for q in model.parameters()]
        opt.zero_grad()
        alpha = annealed_alpha(step, cfg.steps, cfg.alpha, getattr(cfg, "alpha_start", 0.0),  # REINFORCE's anneal
                               getattr(cfg, "alpha_anneal", 1.0))
        (-obj.value(lp, alpha)).backward()
        clip_and_step(model, opt, sched, cfg)
        if cfg.max_kl:
            backtrack(model, before, moved_from(lp.detach()), cfg.max_kl)
    return model.eval()


def flat_view(model, obj: ExactObjective):
    """``model``'s parameters as one float64 vector, and log π(y) of the well-formed sequences as a function
    of such a vector (torch.func, eager attention: SDPA's CPU kernels have no vmap rules)."""
    model = copy.deepcopy(model).double().eval()
    model.set_attn_implementation("eager")
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def unflatten(x):
        return dict(zip(names, (t.view(s) for t, s in zip(x.split([math.prod(s) for s in shapes]), shapes))))

    def logp(x):
        return sequence_logprobs(lambda ids: functional_call(model, unflatten(x), (ids,)), obj.ids)

    return model, flat, logp, unflatten


def natural_ascent(obj: ExactObjective, init, steps: int, damping: float = 1e-3, step: float = 0.5):
    """Exact natural-gradient ascent: (F + λI)⁻¹∇J with F the Fisher matrix of the well-formed sequence
    distribution (enumerated; per-sequence scores by torch.func), each step halved until J does not fall.
    Prints the distance to π* every 10 steps; returns the model."""
    model, flat, logp, unflatten = flat_view(init, obj)
    for i in range(steps):
        x = flat.clone().requires_grad_(True)
        lp = logp(x)
        j = obj.value(lp)
        (g,) = torch.autograd.grad(j, x)
        scores = jacrev(logp)(flat)  # [N, P] ∇log π(y) of every well-formed sequence
        w = lp.detach().exp()
        w = w / w.sum()
        s = (scores - w @ scores) * w.sqrt()[:, None]  # F = sᵀs
        inner = s @ s.T + damping * torch.eye(len(w), dtype=s.dtype)
        direction = (g - s.T @ torch.linalg.solve(inner, s @ g)) / damping  # Woodbury
        eta = step
        while eta > 1e-6 and obj.value(logp(flat + eta * direction)).item() < j.item():
            eta /= 2
        flat = flat + eta * direction
        if i % 10 == 9 or i == steps - 1:
            model.load_state_dict(unflatten(flat), strict=False)
            rep = obj.report(model)
            print(f"  natural step {i + 1}: KL(π‖π*) = {rep['kl_optimum']:.5f}  TV = {rep['tv']:.4f}", flush=True)
    model.load_state_dict(unflatten(flat), strict=False)
    return model


def curvature(obj: ExactObjective, init, tolerances=(1e-4, 1e-5, 1e-6), max_iter: int = 500):
    """The exact Hessian of J on the way onto the stationary point L-BFGS heads for from ``init``: stopped
    once no gradient entry exceeds each tolerance in turn (or after ``max_iter`` iterations, when it is still
    climbing), it prints the gradient norm and the Hessian's extreme eigenvalues. At a saddle of J (we
    maximise J) the largest is positive, and gradient ascent leaves along it at a rate lr·λ_max per step, while
    it is stable only for lr < 2/|λ_min|; a largest eigenvalue that shrinks as the gradient does marks a
    degenerate saddle, flat to second order."""
    model = copy.deepcopy(init).double().train().requires_grad_(True)
    for tol in tolerances:
        lbfgs_on(obj, model, max_iter=max_iter, tolerance_grad=tol)()
        _, flat, logp, _ = flat_view(model, obj)
        x = flat.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.value(logp(x)), x, create_graph=True)
        rows = [torch.autograd.grad(g[k], x, retain_graph=True)[0] for k in tqdm(range(len(x)), desc="Hessian")]
        eig = torch.linalg.eigvalsh(torch.stack(rows))
        rep = obj.report(model)
        print(f"L-BFGS from the RL policy to max |∂J| ≤ {tol:g}: |∇J| = {g.norm():.1e}  J = {rep['J']:.6f}  "
              f"TV = {rep['tv']:.4f}; Hessian eigenvalues: largest " + ", ".join(f"{v:.1e}" for v in eig[-3:].flip(0))
              + f"; smallest {eig[0]:.1e}; {(eig > 1e-6).sum()} of {len(eig)} above 1e-6", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished toy_kl run folder")
    parser.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps before L-BFGS")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--natural", type=int, default=0, metavar="STEPS",
                        help="also take this many exact natural-gradient steps from the RL policy")
    parser.add_argument("--hessian", action="store_true",
                        help="also print the exact Hessian's extreme eigenvalues on the way onto the RL policy's "
                             "stationary point")
    parser.add_argument("--homotopy", type=float, default=0.0, metavar="ALPHA",
                        help="also search from the base along KL coefficients falling by √2 from ALPHA to the "
                             "run's α (--steps Adam steps and L-BFGS at each)")
    parser.add_argument("--exact-trainer", action="store_true",
                        help="also run the run's own RL recipe from the base on the exact gradient (no sampling)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = build_spec(OmegaConf.load(Path(args.run_dir) / ".hydra" / "config.yaml"))
    task = TASKS.get(spec.task.name).fn(spec.task)
    paths = load_results(args.run_dir)["checkpoints"]
    base, policy = (AutoModelForCausalLM.from_pretrained(paths[k]).eval() for k in ("base", "policy"))
    alpha = spec.arms["policy"].alpha
    if args.homotopy and args.homotopy <= alpha:
        parser.error(f"--homotopy {args.homotopy:g} must exceed the run's α ({alpha:g}): the ladder falls to it")
    obj = ExactObjective(task, base, alpha)
    names = [*task.branches, MALFORMED]
    print(f"{task.cfg.reward} α={alpha:g}: J* = {obj.j_star:.5f}, optimum shares "
          + "/".join(f"{obj.optimum[n]:.4f}" for n in names) + f", base malformed mass {obj.m_base:.1e}")
    if args.hessian:
        curvature(obj, policy)
    rows = {"RL policy": policy}
    if args.exact_trainer:
        rows["trainer on the exact gradient"] = exact_trainer(obj, base, spec.arms["policy"])
    if args.natural:
        rows["natural gradient from RL policy"] = natural_ascent(obj, policy, args.natural)
    if args.homotopy:
        rows[f"in-class from base, α from {args.homotopy:g}"] = homotopy(task, base, alpha, args.homotopy, args.steps, args.lr)
    for label, init in (("base", base), ("RL policy", policy)):
        rows[f"exact Adam from {label}"] = adam(obj, init, args.steps, args.lr)
        rows[f"in-class from {label}"] = polish(obj, rows[f"exact Adam from {label}"])
    for label, model in rows.items():
        rep = obj.report(model)
        print(f"{label:<32} J = {rep['J']:.5f}  KL(π‖π*) = {rep['kl_optimum']:.5f}  TV = {rep['tv']:.4f} "
              f"(weights {rep['tv_weights']:.4f}, continuations {rep['tv_continuations']:.4f})  shares "
              + "/".join(f"{rep['shares'][n]:.4f}" for n in names))


if __name__ == "__main__":
    main()
