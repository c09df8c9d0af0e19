"""Where a toy_kl policy really is during RL: the exact objective J = E[r] − α·KL(π‖π_base), its KL, the
branch shares and the TV to the optimum after every RL step, by enumerating every well-formed sequence; and
that TV's two parts (``tv_weights``: the branch weights' miss for the policy's continuations; ``tv_continuations``:
the miss those continuations force; docs/toy_kl.md, "Weights or continuations").

    python benchmarks/toy_kl_trace.py --out trace alpha=2 seed=1 trainer=ppo trainer.kl=k1 \\
        base.checkpoint=outputs/<date>/<time>/checkpoints/base

Trains as ``python run.py experiment=toy_kl <overrides>`` does, with the same seeds and the same order of
random draws (the evaluation draws none), so the traced run ends where the untraced one did. The metrics a
trainer logs are estimates from its own samples; this is the policy's true position, and how the
collapses described in docs/toy_kl.md and docs/trainers.md were found. Writes ``trace.csv``, ``trace.png``
(J and the branch shares against the step, the optimum's as dashed lines) and the final ``policy/`` to
``--out``, and prints the lowest J, the steps at which J was below the base's (worse than no training),
and the final TV. No library evaluates an RL objective exactly along training, hence this script.
"""

import argparse
import copy
import csv
import io
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from hydra import compose, initialize_config_dir

from rlcircuits.analysis.kl_optimum import ExactObjective
from rlcircuits.io import save_checkpoint, save_figure, write_text
from rlcircuits.logging import NullLogger
from rlcircuits.pipeline import build_spec, make_base, seed_everything
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.toy_abc import MALFORMED
from rlcircuits.trainers import TRAINERS

CONF = Path(__file__).resolve().parents[1] / "conf"
COLUMNS = ("J", "reward", "kl_base", "kl_optimum", "tv", "tv_weights", "tv_continuations")  # of ExactObjective.report


class Trace:
    """A logger that evaluates ``policy`` exactly each time the trainer logs (every step here)."""

    def __init__(self, policy, objective: ExactObjective):
        self.policy, self.objective, self.rows = policy, objective, []

    def log(self, metrics: dict, step: int, stage: str) -> None:
        report = self.objective.report(self.policy)
        self.rows.append({"step": step, **{k: report[k] for k in COLUMNS}, **report["shares"],
                          "sampled_objective": float(metrics.get("train/objective", float("nan")))})


def plot(rows: list[dict], objective: ExactObjective, j_base: float, names: list[str], title: str):
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, [r["J"] for r in rows], label="J (exact)")
    top.plot(steps, [r["sampled_objective"] for r in rows], alpha=0.4, lw=0.8, label="the trainer's estimate")
    top.axhline(objective.j_star, ls="--", c="k", lw=1, label="J* (optimum)")
    top.axhline(j_base, ls=":", c="grey", lw=1, label="J of the base")
    top.set_ylabel("E[r] − α·KL")
    top.legend(fontsize=8)
    top.set_title(title, fontsize=9)
    for i, name in enumerate(names):
        line, = bottom.plot(steps, [r[name] for r in rows], label=name, color=f"C{i}")
        bottom.axhline(objective.optimum[name], ls="--", lw=1, color=line.get_color())
    bottom.set_xlabel("RL step")
    bottom.set_ylabel("share (dashed: π*)")
    bottom.legend(fontsize=8)
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("trace"), help="folder for trace.csv and trace.png")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of experiment=toy_kl")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=toy_kl", *args.overrides, "trainer.log_every=1"])
    spec = build_spec(cfg)
    if getattr(spec.model, "lora", None) is not None and spec.model.lora.r > 0:
        raise SystemExit("toy_kl_trace traces full fine-tuning only; drop model.lora")
    torch.set_num_threads(spec.run.threads or torch.get_num_threads())
    seed_everything(spec.run.seed)
    task = TASKS.get(spec.task.name).fn(spec.task)
    base = make_base(spec, task, NullLogger(), torch.device("cpu")).eval().requires_grad_(False)
    tcfg = spec.arms["policy"]
    policy = copy.deepcopy(base).requires_grad_(True).train()  # as the pipeline makes it: no random draws
    objective = ExactObjective(task, base, tcfg.alpha)
    j_base = objective.report(base)["J"]  # E_base[r]: its KL to itself is 0
    trace = Trace(policy, objective)
    TRAINERS.get(tcfg.name).fn(tcfg, policy, base, task, trace, "policy", spec.run.seed)
    save_checkpoint(policy, task.tokenizer, args.out / "policy")

    rows, names = trace.rows, [*task.branches, MALFORMED]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(args.out / "trace.csv", buf.getvalue())
    title = " ".join(f"{key}=…/{Path(value).name}" if "/" in value else f"{key}={value}"  # paths: last part only
                     for key, _, value in (o.partition("=") for o in args.overrides)) or "experiment=toy_kl"
    save_figure(plot(rows, objective, j_base, names, title), args.out / "trace.png")
    worst = min(rows, key=lambda r: r["J"])
    below = [r["step"] for r in rows if r["J"] < j_base]
    print(f"J* = {objective.j_star:.4f}, J of the base = {j_base:.4f}; lowest J {worst['J']:.4f} at step "
          f"{worst['step']} (shares " + "/".join(f"{worst[n]:.3f}" for n in names) + ")")
    print(f"steps with J below the base's: {len(below)} of {len(rows)}"
          + (f" (first {below[0]}, last {below[-1]})" if below else ""))
    last = rows[-1]
    print(f"final: J {last['J']:.4f}, KL(π‖π*) {last['kl_optimum']:.5f}, TV to the optimum {last['tv']:.4f} "
          f"(its branch weights {last['tv_weights']:.4f}, its continuations {last['tv_continuations']:.4f})")
    print(f"wrote trace.csv, trace.png and the final policy (policy/) to {args.out}")


if __name__ == "__main__":
    main()
