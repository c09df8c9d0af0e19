"""End to end: every experiment file runs in smoke mode, writes its run folder, and loads back; sweeps
write their summary; wandb logs for real (offline)."""

import csv
import io
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from rlcircuits.analysis.kl_optimum import STALLED
from rlcircuits.logging import NullLogger
from rlcircuits.pipeline import build_spec, limit_threads, load_results, make_base, report, run
from rlcircuits.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def run_in(tmp_path, monkeypatch, compose_cfg, *overrides):
    monkeypatch.chdir(tmp_path)
    headline = run(compose_cfg(*overrides))
    return headline, load_results(tmp_path)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``smoke_run(experiment)`` → (run folder, results) of ``experiment=<experiment> debug=smoke``, run once."""
    done = {}

    def _run(experiment):
        if experiment not in done:
            folder = tmp_path_factory.mktemp(experiment)
            with pytest.MonkeyPatch.context() as mp, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                mp.chdir(folder)
                run(compose("config", overrides=[f"experiment={experiment}", "debug=smoke"]))
            done[experiment] = folder, load_results(folder)
        return done[experiment]

    return _run


def test_transformers_bars_vanish_when_done(smoke_run):
    """After a run, transformers' own progress bars (checkpoint loading and saving) are transient like ours."""
    smoke_run("toy_kl")
    bar = hf_logging.tqdm(range(2), desc="Loading weights", disable=False, file=io.StringIO())
    assert bar.leave is False


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_in_smoke_mode(smoke_run, experiment):
    folder, results = smoke_run(experiment)
    assert {"base", "policy"} <= set(results["checkpoints"])
    for path in results["checkpoints"].values():  # loadable with transformers alone
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.vocab_size == len(tok)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {"base", "policy"} <= {line["stage"] for line in lines}
    assert (folder / "metrics.csv").exists() and (folder / "report.md").read_text().startswith("# rlcircuits")
    assert not list(folder.rglob(".*.tmp*")) and not list(folder.glob("checkpoints/.*"))


def test_toy_kl_results_layout(tmp_path, monkeypatch, compose_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="rlcircuits.pipeline"):
        headline, results = run_in(tmp_path, monkeypatch, compose_cfg, "experiment=toy_kl", "debug=smoke", "alpha=0.5")
    assert f"tv_policy_optimal = {headline:.4g}" in caplog.text  # the run ends by saying where its results are
    for stage in ("base: gpt2 (211 parameters), sft for 5 steps: ", "policy: reinforce, 5 steps from the base: ",
                  "analysis kl_optimum: "):  # and logs each stage with its duration
        assert stage in caplog.text
    assert str(tmp_path / "results.json") in caplog.text
    assert results["base_excess_loss"] > STALLED and "its SFT stalled or was cut short" in caplog.text  # 5 SFT steps
    assert results["alpha"] == 0.5 and results["branches"] == ["A", "B", "C"]
    for kind in ("base", "policy", "optimal", "closed_form", "branches_only", "reweighted"):
        shares = results["distribution"][kind]
        assert set(shares) == {"A", "B", "C"}
        assert 0.99 <= sum(shares.values()) + results["malformed"][kind] <= 1.01
    assert headline == results["tv_policy_optimal"]
    assert headline <= results["tv_policy_reweighted"] + results["tv_reweighted_optimal"] + 1e-12  # its two parts
    kl_both_ways = results["kl_policy_optimal"], results["kl_optimal_policy"]
    assert 0 < results["tv_sequences_policy_optimal"] <= min(math.sqrt(kl / 2) for kl in kl_both_ways)  # Pinsker
    assert (tmp_path / "plots" / "branch_distribution.png").stat().st_size > 0


def test_base_checkpoint_is_used_as_it_is(smoke_run, compose_cfg, caplog):
    """``base.checkpoint`` replaces base training (``base.trainer`` is not run) and runs with the model
    option's attention, which checkpoints do not store."""
    folder = smoke_run("toy_kl")[0] / "checkpoints" / "base"
    spec = build_spec(compose_cfg("experiment=toy_kl", "debug=smoke", f"base.checkpoint={folder}"))
    task = TASKS.get(spec.task.name).fn(spec.task)
    with caplog.at_level(logging.INFO, logger="rlcircuits.pipeline"):
        base = make_base(spec, task, NullLogger(), torch.device("cpu"))
    saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in base.state_dict().items())
    assert base.config._attn_implementation == spec.model.attention == "exp_softmax"
    assert "base.trainer not run" in caplog.text


def test_sweep_writes_summary_and_headline_plot(tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "experiment=toy_kl", "debug=smoke", "alpha=0.5,2",
         f"hydra.sweep.dir={sweep}"],
        check=True, cwd=tmp_path, capture_output=True,
    )
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(r["alpha"]) for r in rows] == [0.5, 2.0]
    assert all(float(r["tv_policy_optimal"]) >= 0 for r in rows)
    assert (sweep / "branch_shares_vs_alpha.png").stat().st_size > 0


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_wandb_logger(tmp_path, monkeypatch, compose_cfg, mode):
    run_in(tmp_path, monkeypatch, compose_cfg, "experiment=toy_kl", "debug=smoke", "logger=wandb",
           f"logger.mode={mode}")
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    if mode == "offline":
        assert len(offline_runs) == 1
        (log,) = offline_runs[0].glob("*.wandb")  # the run's record, ready for `wandb sync`
        deadline = time.monotonic() + 30  # wandb's service process may still be writing it on a loaded machine
        while b"base/train/loss" not in (data := log.read_bytes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b"toy_abc" in data  # the resolved config
        assert b"policy/train/reward" in data and b"base/train/loss" in data  # the metrics
    else:
        assert not offline_runs


def test_lora_post_training_of_a_loaded_model(tmp_path, monkeypatch, compose_cfg):
    """model=hf loads a folder, LoRA post-trains it against itself with the adapter disabled."""
    base_dir = tmp_path / "first"
    base_dir.mkdir()
    # a base good enough to emit well-formed sequences, so rewards (and gradients) are not all equal
    _, first = run_in(base_dir, monkeypatch, compose_cfg, "experiment=toy_kl", "base.trainer.steps=300", "trainer.steps=1")
    second = tmp_path / "second"
    second.mkdir()
    _, results = run_in(second, monkeypatch, compose_cfg, "experiment=toy_kl", "debug=smoke", "model=hf",
                        f"model.path={first['checkpoints']['base']}", "model.lora.r=2", "base.trainer=null")
    policy = AutoModelForCausalLM.from_pretrained(results["checkpoints"]["policy"])
    base = AutoModelForCausalLM.from_pretrained(results["checkpoints"]["base"])
    changed = [n for (n, p), (_, q) in zip(policy.named_parameters(), base.named_parameters()) if not p.equal(q)]
    assert changed and not any("lora" in n for n in changed)  # merged into a plain checkpoint
    assert 0 <= results["tv_policy_optimal"] <= 1


def test_cards_arms_and_analyses(smoke_run):
    """init, RL and SFT arms from one init, each scored on every evaluation split and analysed."""
    folder, results = smoke_run("cards_sft_vs_rl")
    table = results["accuracy"]
    assert set(table) == {"init", "rl", "sft"} and set(results["checkpoints"]) == {"base", "policy", "control"}
    splits = {"val", "test", "ood_colour", "ood_composition", "ood_paraphrase", "ood_threshold"}
    assert all(set(accs) == splits and all(0 <= a <= 1 for a in accs.values()) for accs in table.values())
    assert (folder / "plots" / "accuracy.png").stat().st_size > 0
    report = (folder / "report.md").read_text()
    assert "| | val | test | ood_colour |" in report and "| rl | " in report  # one table row per checkpoint
    for name in ("probe", "patching", "ablation", "sae", "logit_lens"):  # every circuit analysis, on every arm
        assert f"**{name}**" in report and (folder / "analysis" / f"{name}.json").exists()
        assert set(json.loads((folder / "analysis" / f"{name}.json").read_text())) >= (
            {"results"} if name == "ablation" else {"init", "rl", "sft"})


def test_report_labels_every_table_row(tmp_path):
    """Nested results become tables whose rows are named by their path; a dict's own entries by its key."""
    results = {"alpha": 0.5, "checkpoints": {"base": "checkpoints/base", "policy": "checkpoints/policy"},
               "distribution": {"base": {"A": 0.25, "B": 0.75}, "policy": {"A": 0.5, "B": 0.5}}}
    text = report(results, tmp_path)
    assert "- **alpha**: 0.5" in text
    assert "| checkpoints | checkpoints/base | checkpoints/policy |" in text
    assert "| base | 0.25 | 0.75 |" in text and "| policy | 0.5 | 0.5 |" in text
    assert "|  |" not in text


def test_limit_threads_sets_torch_and_blas_and_zero_leaves_them():
    from threadpoolctl import threadpool_info, threadpool_limits

    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=None):  # restores the BLAS limits on exit
            limit_threads(0)
            assert torch.get_num_threads() == before
            for n in (2, 1):
                limit_threads(n)
                assert torch.get_num_threads() == n
                assert all(pool["num_threads"] == n for pool in threadpool_info())
    finally:
        torch.set_num_threads(before)
