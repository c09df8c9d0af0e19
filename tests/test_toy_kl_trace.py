"""benchmarks/toy_kl_trace.py re-runs toy_kl with an exact evaluation after every RL step; its claim is that
the evaluation draws no random numbers, so the traced run is the run itself."""

import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def test_trace_trains_the_same_policy_as_the_run(tmp_path):
    common = ["experiment=toy_kl", "debug=smoke", "alpha=0.5", "seed=4"]
    subprocess.run([sys.executable, str(ROOT / "run.py"), *common, f"hydra.run.dir={tmp_path / 'run'}"],
                   check=True, capture_output=True)
    trace = [sys.executable, str(ROOT / "benchmarks" / "toy_kl_trace.py"), "--out", str(tmp_path / "trace"),
             *common[1:]]
    out = subprocess.run(trace, check=True, capture_output=True, text=True).stdout
    run_policy = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "policy").state_dict()
    traced = AutoModelForCausalLM.from_pretrained(tmp_path / "trace" / "policy").state_dict()
    assert all(torch.equal(run_policy[k], traced[k]) for k in run_policy)
    assert not torch.equal(run_policy["lm_head.weight"], AutoModelForCausalLM.from_pretrained(
        tmp_path / "run" / "checkpoints" / "base").state_dict()["lm_head.weight"])  # RL moved it: a real check
    rows = (tmp_path / "trace" / "trace.csv").read_text().splitlines()
    assert rows[0].startswith("step,J,reward,kl_base,kl_optimum,tv,tv_weights,tv_continuations") and len(rows) > 2
    assert "TV to the optimum" in out
