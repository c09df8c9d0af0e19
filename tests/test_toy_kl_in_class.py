"""benchmarks/toy_kl_in_class.py decides whose a toy_kl miss is by maximising the exact objective within the
architecture. Its verdicts rest on J(π) = J* − α·KL(π‖π*): no policy may score above J*, and L-BFGS's polish
never keeps a worse point than the Adam stage it starts from."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(?P<label>\S.*?)\s+J = (?P<j>-?[\d.]+)\s+KL\(π‖π\*\) = (?P<kl>-?[\d.]+)", re.M)


def test_every_policy_found_is_below_the_optimum(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=toy_kl", "debug=smoke", "alpha=0.5",
                    "seed=3", f"hydra.run.dir={run}"], check=True, capture_output=True)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_kl_in_class.py"), str(run), "--steps", "30",
                          "--exact-trainer", "--homotopy", "2"], check=True, capture_output=True, text=True).stdout
    j_star = float(re.search(r"J\* = (-?[\d.]+)", out).group(1))
    rows = {m["label"]: (float(m["j"]), float(m["kl"])) for m in ROW.finditer(out)}  # Gibbs: J ≤ J*
    assert set(rows) == {"RL policy", "trainer on the exact gradient", "exact Adam from base", "in-class from base",
                         "exact Adam from RL policy", "in-class from RL policy", "in-class from base, α from 2"}
    for label, (j, kl) in rows.items():
        assert j <= j_star + 1e-5 and kl >= -1e-5, label
    for start in ("base", "RL policy"):
        assert rows[f"in-class from {start}"][0] >= rows[f"exact Adam from {start}"][0]
