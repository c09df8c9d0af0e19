"""Wall time of the cards study's whole analysis stack on a finished run's checkpoints.

    python benchmarks/cards_analysis.py outputs/<date>/<time> [extra overrides...] [--out DIR]

Runs every analysis of ``experiment=cards_sft_vs_rl`` (accuracy, probe, patching, ablation, sae,
logit_lens) on the run's ``base``, ``policy`` and ``control`` checkpoints on one thread (``threads=1``; the
experiment itself uses every core), writing into ``DIR`` (default: a temporary folder, removed afterwards).
Prints each analysis's time and, last, ``analysis stack wall time: <s> s``.
Target (issue 4): ≤ 5 min of CPU.
"""

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from rlcircuits.analysis import ANALYSES
from rlcircuits.io import write_json
from rlcircuits.pipeline import build_spec, limit_threads, load_results
from rlcircuits.tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(run_dir: str, overrides: list[str], out: str | None = None) -> float:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        spec = build_spec(compose("config", overrides=["experiment=cards_sft_vs_rl", "threads=1", *overrides]))
    limit_threads(spec.run.threads)
    task = TASKS.get(spec.task.name).fn(spec.task)
    checkpoints = {k: Path(p) for k, p in load_results(run_dir)["checkpoints"].items()}
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, cfg in spec.analyses.items():
            start = time.perf_counter()
            results |= ANALYSES.get(name).fn(cfg, task, checkpoints, Path(out or tmp))
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{name}: {seconds:.1f} s")
        if out:
            write_json(Path(out) / "results.json", results)
    print(f"analysis stack wall time: {total:.1f} s on {', '.join(checkpoints)}")
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished cards_sft_vs_rl run folder")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. analysis.probe.n_examples=300")
    parser.add_argument("--out", help="keep the analyses' outputs here")
    args = parser.parse_intermixed_args()
    main(args.run_dir, args.overrides, args.out)
