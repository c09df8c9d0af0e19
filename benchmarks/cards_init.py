"""Wall time and ID accuracy of the cards study's init checkpoint: SFT from scratch with the default budget.

    python benchmarks/cards_init.py [extra overrides...]

Trains the base (``base.trainer`` of ``experiment=cards_sft_vs_rl``) on one thread (``threads=1``; the
experiment itself uses every core), then scores greedy answers on 600 ID test prompts (untimed). Prints
``init training wall time: <s> s`` and, last, ``init ID accuracy: <acc>``. Target (issue 4): accuracy ≥ 0.9
in ≤ 15 min of CPU.
"""

import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from rlcircuits.logging import NullLogger
from rlcircuits.models import MODELS
from rlcircuits.pipeline import build_spec, limit_threads, seed_everything
from rlcircuits.tasks import TASKS
from rlcircuits.trainers import TRAINERS
from rlcircuits.trainers.common import accuracy

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(overrides: list[str]) -> float:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        spec = build_spec(compose("config", overrides=["experiment=cards_sft_vs_rl", "threads=1", *overrides]))
    limit_threads(spec.run.threads)
    seed_everything(spec.run.seed)
    task = TASKS.get(spec.task.name).fn(spec.task)
    model = MODELS.get(spec.model.name).fn(spec.model, task)
    start = time.perf_counter()
    TRAINERS.get(spec.base_trainer.name).fn(spec.base_trainer, model, None, task, NullLogger(), "base", spec.run.seed)
    wall = time.perf_counter() - start
    acc = accuracy(model.eval(), task, "test", 600, spec.run.seed)
    print(f"init training wall time: {wall:.0f} s ({spec.base_trainer.steps} steps × batch {spec.base_trainer.batch_size})")
    print(f"init ID accuracy: {acc:.3f}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
