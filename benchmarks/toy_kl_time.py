"""Wall time of one toy_kl run end to end (base SFT, RL, analysis) on this machine.

    python benchmarks/toy_kl_time.py [--repeat N] [extra overrides...]

Prints the first run's report, each run's time with its phases (the pipeline's own timings from
``run.log``; "rest" is start-up — mostly importing torch and transformers — and writing), and, as its last
line, ``toy_kl wall time: <s> s`` (the median over the runs). Target (issue 2): ≤ 60 s on the 2-core CPU.
This VM's speed drifts by ±10–20 % between runs minutes apart, so one run says little: repeat it.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def phases(log: str) -> dict[str, float]:
    """The pipeline's timed phases in ``run.log`` ("base: gpt2 (…), sft for 2,000 steps: 12.0 s") by their
    first word: base, policy, analysis."""
    return {m[1]: float(m[2]) for m in re.finditer(r"\] - (\w+)[^\n]*: ([\d.]+) s$", log, re.M)}


def wall_time(overrides: list[str], show_report: bool) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "run.py"), "experiment=toy_kl", f"hydra.run.dir={tmp}", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"})
        wall = time.perf_counter() - start
        if show_report:
            print((Path(tmp) / "report.md").read_text())
        parts = phases((Path(tmp) / "run.log").read_text())
    return wall, {**parts, "rest": wall - sum(parts.values())}


def main(overrides: list[str], repeat: int = 1) -> float:
    walls = []
    for i in range(repeat):
        wall, parts = wall_time(overrides, show_report=i == 0)
        walls.append(wall)
        split = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        print(f"run {i + 1}/{repeat}: {wall:.1f} s ({split})", flush=True)
    median = statistics.median(walls)
    if repeat > 1:
        print(f"min {min(walls):.1f} s, max {max(walls):.1f} s, {sum(w > 60 for w in walls)} of {repeat} over 60 s")
    print(f"toy_kl wall time: {median:.1f} s")
    return median


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (the median is reported)")
    args, overrides = parser.parse_known_args()
    main(overrides, args.repeat)
