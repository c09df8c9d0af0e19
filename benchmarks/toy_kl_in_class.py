"""Is a toy_kl miss the trainer's or the model's? The best policy the architecture reaches on the exact objective.

    python benchmarks/toy_kl_in_class.py outputs/<date>/<time> [--steps 3000]

Takes a finished toy_kl run (its config in ``.hydra/config.yaml``, its base and policy checkpoints) and
maximises J(θ) = E_πθ[r] − α·KL(πθ‖π_base) with no sampling: a sum over every well-formed sequence plus one
lumped malformed outcome, in float64, by full-batch Adam (cosine decay) and then L-BFGS, from the base and
from the RL policy. Since J(θ) = J* − α·KL(πθ‖π*), the gap to J* is the distance to the optimum. Every
iterate is a policy of the architecture, so the best one found bounds from below what the architecture
can reach: if it lands within TV 0.03 of π* and the RL policy does not, the miss is the trainer's; if it
misses too, the architecture (or its optimisation landscape) is the limit. No library does this
optimisation on an enumerated objective, hence this script.
"""

import argparse
import copy
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from rlcircuits.analysis.kl_optimum import ExactObjective, sequence_logprobs
from rlcircuits.pipeline import build_spec, load_results
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.toy_abc import MALFORMED


def maximise(obj: ExactObjective, init, steps: int, lr: float):
    """Full-batch Adam (keeping its best iterate), then L-BFGS until J stops rising; returns the model."""
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
    lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=300, history_size=50, tolerance_grad=1e-12,
                              tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = -obj.value(sequence_logprobs(model, obj.ids))
        loss.backward()
        return loss

    for _ in range(10):
        before, state = obj.report(model)["J"], copy.deepcopy(model.state_dict())
        lbfgs.step(closure)
        after = obj.report(model)["J"]
        if not math.isfinite(after) or after < before:  # never keep a worse point
            model.load_state_dict(state)
            break
        if after - before < 1e-7:
            break
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished toy_kl run folder")
    parser.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps before L-BFGS")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = build_spec(OmegaConf.load(Path(args.run_dir) / ".hydra" / "config.yaml"))
    task = TASKS.get(spec.task.name).fn(spec.task)
    paths = load_results(args.run_dir)["checkpoints"]
    base, policy = (AutoModelForCausalLM.from_pretrained(paths[k]).eval() for k in ("base", "policy"))
    alpha = spec.arms["policy"].alpha
    obj = ExactObjective(task, base, alpha)
    names = [*task.branches, MALFORMED]
    print(f"{task.cfg.reward} α={alpha:g}: J* = {obj.j_star:.5f}, optimum shares "
          + "/".join(f"{obj.optimum[n]:.4f}" for n in names) + f", base malformed mass {obj.m_base:.1e}")
    rows = {"RL policy": policy}
    for label, init in (("base", base), ("RL policy", policy)):
        rows[f"in-class from {label}"] = maximise(obj, init, args.steps, args.lr)
    for label, model in rows.items():
        rep = obj.report(model)
        print(f"{label:<24} J = {rep['J']:.5f}  KL(π‖π*) = {rep['kl_optimum']:.5f}  TV = {rep['tv']:.4f}  shares "
              + "/".join(f"{rep['shares'][n]:.4f}" for n in names))


if __name__ == "__main__":
    main()
