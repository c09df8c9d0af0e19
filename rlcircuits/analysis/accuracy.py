"""Greedy-decoding accuracy of every checkpoint on every evaluation split, with a grouped bar plot.

The cards study's headline: does post-training generalise out of distribution? Checkpoints are named
by role: ``base`` → ``init``, ``policy`` → ``rl``, ``control`` → ``sft`` when the control arm is SFT.

    python run.py experiment=cards_sft_vs_rl
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from transformers import AutoModelForCausalLM

from rlcircuits.analysis import ANALYSES
from rlcircuits.analysis.prompts import ROLE
from rlcircuits.io import save_figure
from rlcircuits.registry import check
from rlcircuits.tasks.base import Task
from rlcircuits.trainers.common import accuracy


@dataclass
class AccuracyConfig:
    name: str = "accuracy"
    n_examples: int = 600  # greedy-decoded examples per split and checkpoint
    seed: int = 0  # evaluation data seed (the top-level `seed`)

    def __post_init__(self):
        check(self.n_examples >= 1, "n_examples", "must be ≥ 1")

    def check_task(self, task_cls) -> None:
        check(task_cls.has_answer, "task", f"accuracy needs a task with right answers (e.g. task=cards), "
              f"not {task_cls.__name__}")


def plot_accuracy(table: dict[str, dict[str, float]], path: Path) -> None:
    splits = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(1.4 * len(splits) + 2, 3.5))
    width = 0.8 / len(table)
    x = np.arange(len(splits))
    for i, (arm, accs) in enumerate(table.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [accs[s] for s in splits], width, label=arm)
    ax.set_xticks(x, splits, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend()
    save_figure(fig, path)


@ANALYSES.register("accuracy", schema=AccuracyConfig)
def run(cfg: AccuracyConfig, task: Task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    table = {}
    for name, path in checkpoints.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        table[ROLE.get(name, name)] = {s: accuracy(model, task, s, cfg.n_examples, cfg.seed) for s in task.splits[1:]}
    plot_accuracy(table, out_dir / "plots" / "accuracy.png")
    return {"accuracy": table}
