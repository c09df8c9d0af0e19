"""Native vs TRL on toy_kl: completions per second, and wall time until the policy is (and stays) within TV 0.03
of the exact optimum — same base model, batch size, sequence length and hyperparameters (the experiment's own).

    python benchmarks/throughput.py                       # reinforce (native) vs RLOOTrainer (trl), α = 1
    python benchmarks/throughput.py --trainers reinforce grpo --alpha 0.5

The base is trained once (native SFT) and shared. Every ``log_every`` steps the policy's branch shares are
estimated from 4,096 samples and compared with the exact optimum; that check is not counted in the
timings. Prints one row per (trainer, backend) and, last, ``native/trl throughput ratio: <x>`` for the
first trainer.
"""

import argparse
import copy
import time
from pathlib import Path

import torch
import trl  # noqa: F401  (imported up front: its import time is not TRL's training time)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlcircuits.analysis.kl_optimum import exact_optimum, sampled_shares, total_variation
from rlcircuits.logging import NullLogger
from rlcircuits.models import MODELS
from rlcircuits.pipeline import build_spec
from rlcircuits.tasks import TASKS
from rlcircuits.trainers import TRAINERS

CONF = Path(__file__).resolve().parents[1] / "conf"
BOUND = 0.03
SAME_ALGORITHM = {"reinforce": ["trainer.baseline=rloo", "trainer.max_kl=0"]}  # what RLOOTrainer runs, on both backends


class Clock:
    """A logger that checks TV to the optimum at each logged step, keeping that time off the clock."""

    def __init__(self, policy, task, optimal: dict, seed: int):
        self.policy, self.task, self.optimal, self.seed = policy, task, optimal, seed
        self.start, self.excluded, self.checks = time.perf_counter(), 0.0, []  # checks: (seconds, TV)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def log(self, metrics: dict, step: int, stage: str) -> None:
        t = time.perf_counter()
        tv = total_variation(sampled_shares(self.policy, self.task, 4096, self.seed + step), self.optimal)
        self.checks.append((self.elapsed(), tv))
        self.excluded += time.perf_counter() - t

    def settled(self) -> float | None:
        """Seconds until TV ≤ BOUND at this check and every later one (None: not by the end)."""
        for i, (seconds, _) in enumerate(self.checks):
            if all(tv <= BOUND for _, tv in self.checks[i:]):
                return seconds
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["reinforce"], choices=["reinforce", "grpo"])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfgs = {(name, backend): compose("config", overrides=[
            "experiment=toy_kl", f"alpha={args.alpha}", f"seed={args.seed}", f"trainer={name}", f"trainer.backend={backend}",
            *SAME_ALGORITHM.get(name, []),
        ]) for name in args.trainers for backend in ("native", "trl")}
    spec = build_spec(next(iter(cfgs.values())))
    task = TASKS.get(spec.task.name).fn(spec.task)
    torch.manual_seed(args.seed)
    base = MODELS.get(spec.model.name).fn(spec.model, task)
    t = time.perf_counter()
    TRAINERS.get(spec.base_trainer.name).fn(spec.base_trainer, base, None, task, NullLogger(), "base", args.seed)
    print(f"base: {spec.base_trainer.steps} SFT steps in {time.perf_counter() - t:.1f} s")
    base.eval().requires_grad_(False)
    optimal = exact_optimum(base, task, args.alpha)[0]

    rates = {}
    print(f"seconds of training until TV ≤ {BOUND} to the optimum: first reached, and for good ('settled')")
    print(f"{'trainer':<10} {'backend':<7} {'steps':>5} {'completions/s':>13} {'train s':>8} {'first':>8} {'settled':>8} "
          f"{'final TV':>8}")
    for (name, backend), cfg in cfgs.items():
        tcfg = build_spec(cfg).arms["policy"]
        policy = copy.deepcopy(base).requires_grad_(True).train()
        clock = Clock(policy, task, optimal, args.seed)
        torch.manual_seed(args.seed)
        clock.start = time.perf_counter()
        TRAINERS.get(name).fn(tcfg, policy, base, task, clock, "policy", args.seed)
        seconds = clock.elapsed()
        completions = tcfg.steps * tcfg.batch_size * tcfg.num_generations
        rates[name, backend] = completions / seconds
        reached = next((f"{s:.1f}" for s, tv in clock.checks if tv <= BOUND), "never")
        settled = clock.settled()
        settled = "never" if settled is None else f"{settled:.1f}"
        print(f"{name:<10} {backend:<7} {tcfg.steps:>5} {rates[name, backend]:>13.0f} {seconds:>8.1f} {reached:>8} "
              f"{settled:>8} {clock.checks[-1][1]:>8.4f}")
        print(f"  ({OmegaConf.to_yaml(OmegaConf.structured(tcfg)).strip().replace(chr(10), ', ')})")
    first = args.trainers[0]
    print(f"native/trl throughput ratio: {rates[first, 'native'] / rates[first, 'trl']:.1f}")


if __name__ == "__main__":
    main()
