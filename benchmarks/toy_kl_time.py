"""Wall time of one toy_kl run end to end (base SFT, RL, analysis) on this machine.

    python benchmarks/toy_kl_time.py [extra overrides...]

Prints the run's report and, as its last line, ``toy_kl wall time: <s> s``.
Target (issue 2): ≤ 60 s on the 2-core CPU.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "run.py"), "experiment=toy_kl", f"hydra.run.dir={tmp}", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={"TQDM_DISABLE": "1", **_env()})
        wall = time.perf_counter() - start
        print((Path(tmp) / "report.md").read_text())
    print(f"toy_kl wall time: {wall:.1f} s")
    return wall


def _env() -> dict:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main(sys.argv[1:])
